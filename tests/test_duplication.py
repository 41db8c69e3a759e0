"""harness.tasks.duplication: the data, the scored targets, masked loss and accuracy, training,
checkpoint-resume, the backend swap at evaluation, and bad parameters."""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from harness.tasks.duplication import (
    DuplicationTask,
    TrainConfig,
    build_model,
    eval_batches,
    evaluate,
    loss_and_accuracy,
    make_batch,
    model_config,
    target_mask,
    train,
)

pytestmark = pytest.mark.usefixtures("one_thread")


# A task and model small enough to learn in a few seconds. chunk_len = seq_len / 2: two chunks per
# round, the exact regime, where LSH attention equals dense attention whatever the hashing.
TINY = DuplicationTask(word_len=15, vocab=8)
TINY_MODEL = {"d_model": 64, "heads": 2, "d_ff": 64, "chunk_len": TINY.seq_len // 2}
TINY_TRAIN = TrainConfig(steps=120, batch=16, lr=3e-3, warmup_steps=10, log_every=10, checkpoint_every=40)


def tiny_model(n_hashes: int = 0):
    torch.manual_seed(0)  # same initial weights for every run of a test
    return build_model(model_config(TINY, **TINY_MODEL), n_hashes)


@pytest.fixture(scope="module")
def trained_full():
    """(state, curve) of the tiny model trained with full attention (shared by the tests below)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = tiny_model(0)
    result = train(model, TINY, TINY_TRAIN)
    torch.set_num_threads(threads)
    return model.state_dict(), result


# --- the data ----------------------------------------------------------------------------------------

def test_batch_is_0w0w_with_symbols_in_range():
    task = DuplicationTask(word_len=40, vocab=6)
    tokens = make_batch(task, 64, torch.Generator().manual_seed(0))
    n = task.word_len
    assert tokens.shape == (64, task.seq_len) == (64, 2 * (n + 1))
    assert tokens.dtype == torch.int64
    assert (tokens[:, 0] == 0).all() and (tokens[:, n + 1] == 0).all()
    assert torch.equal(tokens[:, 1:n + 1], tokens[:, n + 2:])
    w = tokens[:, 1:n + 1]
    # Every symbol 1 .. vocab - 1 occurs (64 x 40 draws of 5 symbols), and nothing else does.
    assert sorted(w.unique().tolist()) == list(range(1, task.vocab))


def test_batches_are_deterministic_and_use_only_their_generator():
    torch.manual_seed(3)
    before = torch.get_rng_state()
    a = make_batch(TINY, 8, torch.Generator().manual_seed(5))
    b = make_batch(TINY, 8, torch.Generator().manual_seed(5))
    c = make_batch(TINY, 8, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), before)
    gen = torch.Generator().manual_seed(5)
    first, second = make_batch(TINY, 8, gen), make_batch(TINY, 8, gen)
    assert torch.equal(first, a) and not torch.equal(first, second)  # a stream, not one batch again


def test_eval_batches_are_not_the_training_batches_of_the_same_seed():
    held_out = eval_batches(TINY, 2, 8, seed=0)
    assert all(torch.equal(x, y) for x, y in zip(held_out, eval_batches(TINY, 2, 8, seed=0)))
    training = torch.Generator().manual_seed(0)
    assert not torch.equal(held_out[0], make_batch(TINY, 8, training))


# --- the scored targets ------------------------------------------------------------------------------

def test_target_mask_scores_the_second_copy_only():
    task = DuplicationTask(word_len=3, vocab=5)
    # tokens 0 w1 w2 w3 0 w1 w2 w3 (positions 0..7); target j is token j + 1, so j = 4, 5, 6 predict
    # the second w1, w2, w3. j = 3 (the second 0) and j < 3 (the first copy) are not scored.
    assert target_mask(task).tolist() == [False, False, False, False, True, True, True]
    mask = target_mask(DuplicationTask(word_len=511, vocab=128))
    assert mask.shape == (1023,) and mask.dtype == torch.bool
    assert mask.sum() == 511 and mask.nonzero().flatten().tolist() == list(range(512, 1023))


class Oracle(nn.Module):
    """Logits that are right exactly where `right` (over next-token targets) is True, wrong elsewhere."""

    def __init__(self, task, right):
        super().__init__()
        self.vocab, self.right = task.vocab, right
        self.head = nn.Identity()

    def hidden(self, tokens):
        nxt = torch.cat([tokens[:, 1:], tokens[:, :1]], dim=1)  # the next token (last one unused)
        right = torch.cat([self.right, torch.tensor([True])])
        guess = torch.where(right, nxt, (nxt + 1) % self.vocab)
        return 30.0 * nn.functional.one_hot(guess, self.vocab).float()


def test_loss_and_accuracy_count_the_scored_targets_only():
    tokens = make_batch(TINY, 4, torch.Generator().manual_seed(0))
    mask = target_mask(TINY)
    loss, accuracy = loss_and_accuracy(Oracle(TINY, mask), tokens, TINY)
    assert accuracy == 1.0 and loss.item() < 1e-9  # wrong on every unscored target
    loss, accuracy = loss_and_accuracy(Oracle(TINY, ~mask), tokens, TINY)
    assert accuracy == 0.0 and loss.item() > 20  # right on every unscored target
    one_miss = mask.clone()
    one_miss[TINY.word_len + 3] = False
    _, accuracy = loss_and_accuracy(Oracle(TINY, one_miss), tokens, TINY)
    assert accuracy == pytest.approx(1 - 4 / (4 * TINY.word_len))  # that target, in each of 4 rows


# --- training ----------------------------------------------------------------------------------------

def test_full_attention_learns_the_tiny_task(trained_full):
    _, result = trained_full
    steps = [step for step, _, _ in result.curve]
    assert steps == list(range(10, TINY_TRAIN.steps + 1, 10))
    first_accuracy, last_accuracy = result.curve[0][2], result.curve[-1][2]
    assert first_accuracy < 0.4  # chance is 1 / 7: the task is learnt, not given
    assert last_accuracy >= 0.95
    assert result.resumed_from is None and result.steps == TINY_TRAIN.steps
    assert result.tokens_per_s > 0 and result.wall_s > 0


def test_training_is_deterministic():
    config = TrainConfig(steps=6, batch=4, lr=3e-3, warmup_steps=2, log_every=1)
    runs = []
    for _ in range(2):
        model = tiny_model(2)
        runs.append((train(model, TINY, config).curve, model.state_dict()))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1].values(), runs[1][1].values()))


class Killed(Exception):
    pass


def test_killed_and_resumed_run_equals_an_uninterrupted_one(tmp_path):
    # LSH with 2 rounds and 4 chunks per round, so the hashing is in the loop too.
    task = DuplicationTask(word_len=15, vocab=8)
    mc = model_config(task, d_model=32, heads=2, d_ff=32, chunk_len=8, n_hashes=2)
    config = TrainConfig(steps=12, batch=4, lr=3e-3, warmup_steps=2, log_every=2, checkpoint_every=4)

    def fresh():
        torch.manual_seed(0)
        return build_model(mc, 2)

    whole = fresh()
    uninterrupted = train(whole, task, config)

    path = str(tmp_path / "run.pt")

    def kill_at_7(step, loss, accuracy):
        if step == 7:  # after the checkpoint at step 4, before the one at 8
            raise Killed

    with pytest.raises(Killed):
        train(fresh(), task, config, checkpoint_path=path, on_step=kill_at_7)
    torch.manual_seed(99)  # the resumed process starts from another global RNG state
    resumed_model = fresh()
    seen = []
    resumed = train(resumed_model, task, config, checkpoint_path=path, on_step=lambda *a: seen.append(a[0]))
    assert resumed.resumed_from == 4 and seen == list(range(5, 13))
    assert resumed.curve == uninterrupted.curve  # bit-identical losses and accuracies
    for name, value in whole.state_dict().items():
        assert torch.equal(value, resumed_model.state_dict()[name]), name
    assert os.listdir(tmp_path) == ["run.pt"]  # no temporary file left behind

    again = train(fresh(), task, config, checkpoint_path=path)  # finished: nothing left to run
    assert again.resumed_from == 12 and again.tokens_per_s is None and again.curve == uninterrupted.curve


def test_a_checkpoint_of_another_run_is_refused(tmp_path):
    path = str(tmp_path / "run.pt")
    config = TrainConfig(steps=2, batch=2, log_every=1, checkpoint_every=1)
    train(tiny_model(0), TINY, config, checkpoint_path=path)
    with pytest.raises(ValueError, match="another run"):
        train(tiny_model(0), TINY, TrainConfig(steps=2, batch=2, lr=5e-3, log_every=1), checkpoint_path=path)
    with pytest.raises(ValueError, match="another run"):
        train(tiny_model(1), TINY, config, checkpoint_path=path)  # LSH model, full-attention checkpoint


# --- evaluation --------------------------------------------------------------------------------------

def test_backend_swap_in_the_exact_regime_gives_the_same_accuracy(trained_full):
    state, _ = trained_full
    mc = model_config(TINY, **TINY_MODEL)
    full = evaluate(state, mc, TINY, n_hashes=0, batches=2, batch=16, seed=0)
    assert full >= 0.95
    for n_hashes in (1, 2, 4, 8):
        assert evaluate(state, mc, TINY, n_hashes=n_hashes, batches=2, batch=16, seed=0) == full
    # The same weights really are loaded under each backend: logits agree, not only accuracies.
    tokens = eval_batches(TINY, 1, 4, seed=0)[0]
    dense, lsh = build_model(mc, 0), build_model(mc, 4)
    for model in (dense, lsh):
        model.load_state_dict(state)
        model.eval()
    with torch.no_grad():
        torch.testing.assert_close(lsh(tokens), dense(tokens), rtol=1e-4, atol=1e-4)


def test_evaluate_is_repeatable_and_leaves_the_global_rng_alone(trained_full):
    state, _ = trained_full
    mc = model_config(TINY, **TINY_MODEL)
    before = torch.get_rng_state()
    a = evaluate(state, mc, TINY, n_hashes=2, batches=1, batch=8, seed=1)
    assert a == evaluate(state, mc, TINY, n_hashes=2, batches=1, batch=8, seed=1)
    assert torch.equal(torch.get_rng_state(), before)


def test_untrained_model_scores_about_chance():
    # Guards the accuracy itself: random weights must not look trained.
    mc = model_config(TINY, **TINY_MODEL)
    accuracy = evaluate(tiny_model(0).state_dict(), mc, TINY, n_hashes=0, batches=4, batch=16, seed=0)
    assert accuracy < 0.4


# --- configuration -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, key", [
    ({"word_len": 0}, "word_len"), ({"word_len": 2.5}, "word_len"), ({"word_len": True}, "word_len"),
    ({"vocab": 2}, "vocab"), ({"vocab": "128"}, "vocab"),
])
def test_bad_task_parameters_are_one_line_value_errors(kwargs, key):
    with pytest.raises(ValueError, match=key) as err:
        DuplicationTask(**{"word_len": 4, "vocab": 5, **kwargs})
    assert "\n" not in str(err.value) and repr(list(kwargs.values())[0]) in str(err.value)


@pytest.mark.parametrize("call, key", [
    (lambda: make_batch(TINY, 0, torch.Generator()), "batch"),
    (lambda: make_batch(TINY, 2, 0), "generator"),
    (lambda: TrainConfig(steps=0), "steps"),
    (lambda: TrainConfig(lr=0.0), "lr"),
    (lambda: TrainConfig(grad_clip=-1.0), "grad_clip"),
    (lambda: TrainConfig(seed=2**31), "seed"),  # the upper half of the 32-bit seeds is evaluation's
    (lambda: eval_batches(TINY, 1, 2, seed=-1), "seed"),
    (lambda: build_model(model_config(TINY), -1), "n_hashes"),
    (lambda: loss_and_accuracy(tiny_model(0), torch.zeros(2, 5, dtype=torch.int64), TINY), "seq_len"),
])
def test_bad_arguments_are_value_errors(call, key):
    with pytest.raises(ValueError, match=key):
        call()


# --- the symbols' range and the full attention's backend ---------------------------------------------

def test_trax_symbols_draw_w_from_1_to_vocab_minus_2_and_set_the_chance():
    # trax/inputs.py draws w with numpy's randint(1, vocab - 1): the high end is exclusive.
    trax = DuplicationTask(word_len=40, vocab=6, symbols="trax")
    w = make_batch(trax, 64, torch.Generator().manual_seed(0))[:, 1:41]
    assert sorted(w.unique().tolist()) == [1, 2, 3, 4]
    assert trax.max_symbol == 4 and trax.chance == pytest.approx(1 / 4)
    assert DuplicationTask(word_len=40, vocab=128, symbols="trax").chance == pytest.approx(1 / 126)
    assert DuplicationTask(word_len=40, vocab=128).chance == pytest.approx(1 / 127)
    # The default draws as before the key existed: the same batch, and the same checkpoint fingerprint.
    default = DuplicationTask(word_len=40, vocab=6)
    w = torch.randint(1, 6, (8, 40), generator=torch.Generator().manual_seed(3))  # the draw before the key
    assert torch.equal(make_batch(default, 8, torch.Generator().manual_seed(3))[:, 1:41], w)
    assert default.fingerprint() == {"word_len": 40, "vocab": 6}
    assert trax.fingerprint() == {"word_len": 40, "vocab": 6, "symbols": "trax"}


@pytest.mark.parametrize("kwargs, message", [
    ({"symbols": "numpy"}, "symbols must be 'all' | 'trax', got symbols='numpy'"),
    ({"vocab": 3, "symbols": "trax"}, "symbols='trax' leaves fewer than 2 symbols with vocab=3"),
])
def test_bad_symbols_are_one_line_value_errors(kwargs, message):
    with pytest.raises(ValueError) as err:
        DuplicationTask(**{"word_len": 4, "vocab": 5, **kwargs})
    assert str(err.value) == message


def test_full_attention_is_built_through_the_named_dense_backend():
    mc = model_config(TINY, **TINY_MODEL)
    assert build_model(mc, 0).backend.name == "dense"  # the registry's reference by default
    assert build_model(mc, 0, full_backend="sdpa").backend.name == "sdpa"
    assert build_model(mc, 2, full_backend="sdpa").backend.name == "eager"  # LSH ignores it
    with pytest.raises(ValueError, match="full_backend must be a dense backend .*got full_backend='eager'"):
        build_model(mc, 0, full_backend="eager")


def test_a_model_trained_with_sdpa_is_trained_and_evaluated_through_sdpa(tmp_path):
    from harness.tasks import TaskRun
    from harness.tasks.duplication import TABLE_DEFAULTS, Duplication

    task = Duplication()
    config = task.resolve_table({"word_len": 15, "vocab": 8, "symbols": "trax", "d_model": 64, "heads": 2,
                                 "d_ff": 64, "steps": 120, "batch": 16, "lr": 3e-3, "warmup_steps": 10,
                                 "checkpoint_every": 40, "eval_batches": 2, "eval_batch": 16})
    assert set(config) == set(TABLE_DEFAULTS)
    run = TaskRun(n_hashes=0, lsh_backend=None, chunk_len=32, n_buckets=None, seed=0, device="cpu",
                  full_backend="sdpa")
    checkpoint = str(tmp_path / "checkpoint.pt")
    task.train(config, run, checkpoint)
    assert torch.load(checkpoint, weights_only=False)["fingerprint"]["backend"] == "sdpa"
    under = {full: task.evaluate(config, TaskRun(0, None, 32, None, 0, "cpu", full_backend=full), checkpoint)
             for full in ("sdpa", "dense")}
    assert under["sdpa"].metrics["task_accuracy"] >= 0.9
    # The same weights under the other full attention compute another function (the accuracy may agree:
    # a model trained with sdpa attends past itself under dense too).
    state = torch.load(checkpoint, weights_only=False)["model"]
    tokens = eval_batches(DuplicationTask(15, 8, "trax"), 1, 4, seed=0)[0]
    logits = {}
    for full in ("sdpa", "dense"):
        model = build_model(model_config(DuplicationTask(15, 8, "trax"), d_model=64, heads=2, d_ff=64, chunk_len=32),
                            0, full_backend=full)
        model.load_state_dict(state)
        with torch.no_grad():
            logits[full] = model.eval()(tokens)
    assert (logits["sdpa"] - logits["dense"]).abs().max() > 1e-2
    assert under["sdpa"].metrics["chance_accuracy"] == pytest.approx(1 / 6)

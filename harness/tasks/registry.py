"""The task protocol and the registry: a task's name -> its Task, as backends are registered in impls.

A task is what a model is trained on and evaluated with (a suite's `task` case parameter and its [task]
table). The harness knows a task only through this protocol:

  table_defaults / check_table   the keys of its [task] table, their defaults, their checks
  shape(config)                  the sequence length and the model's batch, heads, d_head (the case's row)
  train(config, run, ...)        trains a model with the run's attention, checkpointed, resumable
  evaluate(config, run, ...)     the trained weights under the run's attention: its row metrics
  metrics                        the row metrics evaluate (and train, in TrainResult.metrics) fills
                                 (declared in the metric table)
  available(config)              whether its data are here: (False, the one-line install command) makes
                                 its cases `unavailable` (default: always available)
  references                     published numbers the task is compared with, by source
  report_sections(frame)         its part of the report: titled sections of tables, charts and text

Its data and model are its own: harness.tasks.training trains any model on any batches. A suite plugin
registers a task with `register_task("name", MyTask())`; the harness then validates, runs and reports
it like a built-in one.
"""
from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TaskShape:
    """What a task case's row says about its model: sequence length, batch, heads and head width."""

    seq_len: int
    batch: int
    heads: int
    d_head: int


@dataclass(frozen=True)
class TaskRun:
    """The attention and place of one training or evaluation.

    n_hashes: 0 = full attention through full_backend (a dense backend; None: the registry's reference
    backend), else LSH with that many rounds through lsh_backend. chunk_len: the LSH chunk length (for
    full attention, the whole sequence); n_buckets: per round (None: the paper's rule). seed: initial
    weights and data. device: where to run.
    """

    n_hashes: int
    lsh_backend: str | None
    chunk_len: int
    n_buckets: int | None
    seed: int
    device: str
    full_backend: str | None = None


@dataclass
class Evaluation:
    """metrics: {metric name: value} for the row (names among the task's `metrics`); train_steps: the
    steps the evaluated weights were trained for."""

    metrics: dict[str, Any]
    train_steps: int | None = None


# --- what a task hands the report: plain data, rendered by harness.report ----------------------------

@dataclass
class Text:
    """A paragraph of plain text (the report escapes it)."""

    text: str


@dataclass
class Table:
    """A small table: a pandas DataFrame, with its index shown as the first column when `index`."""

    title: str
    frame: Any
    index: bool = True
    note: str = ""


@dataclass
class Chart:
    """A plotly figure (a plotly.graph_objects.Figure, or its JSON-ready dict); key: unique in the page.
    title and caption are plain text (the report escapes them)."""

    key: str
    title: str
    caption: str
    figure: Any


@dataclass
class Section:
    """A titled section of the report. key: its anchor; parts: Text, Table and Chart, in order.
    template: the path of a Jinja2 template file the task ships to render them (autoescaped, as the
    report's own; see harness/report/templates/sections/task.html.j2 for what it is given); None: the
    report's generic task section."""

    key: str
    title: str
    parts: list = field(default_factory=list)
    template: str | None = None


# --- the protocol ------------------------------------------------------------------------------------

class Task(ABC):
    """What every task declares; see the module docstring. Checks raise ValueError with one line naming
    the key and its value (the suite loader turns it into a UserError naming the file)."""

    #: The [task] table's keys and their defaults: every key a suite may set, and no other.
    table_defaults: Mapping[str, Any] = {}
    #: Whether the task's model attends causally (its cases' `causal`).
    causal: bool = True
    #: The dtypes it trains and evaluates in.
    dtypes: tuple[str, ...] = ("float32",)
    #: The row metrics evaluate() fills, by name in harness.measure.metrics (a plugin task registers
    #: its own with register_metric).
    metrics: tuple[str, ...] = ()
    #: Published numbers the task is compared with: {source: numbers}.
    references: Mapping[str, Any] = {}

    def resolve_table(self, table: Mapping[str, Any]) -> dict:
        """The [task] table with its defaults, checked."""
        unknown = [key for key in table if key not in self.table_defaults]
        if unknown:
            close = difflib.get_close_matches(unknown[0], list(self.table_defaults), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (keys: {', '.join(self.table_defaults)})"
            raise ValueError(f"unknown key {unknown[0]!r} in [task]{hint}")
        resolved = {**self.table_defaults, **table}
        self.check_table(resolved)
        return resolved

    @abstractmethod
    def check_table(self, config: dict) -> None:
        """Raise ValueError (one line, naming key and value) for a bad value of the resolved table."""

    @abstractmethod
    def shape(self, config: dict) -> TaskShape:
        ...

    @abstractmethod
    def train(self, config: dict, run: TaskRun, checkpoint_path: str,
              on_step: Callable[[int, float, float], None] | None = None):
        """Train a model from seed run.seed with run's attention, writing checkpoint_path (and resuming
        from it when it exists). Returns a harness.tasks.training.TrainResult."""

    @abstractmethod
    def evaluate(self, config: dict, run: TaskRun, checkpoint_path: str) -> Evaluation:
        """The weights of checkpoint_path under run's attention, on held-out data."""

    def available(self, config: dict) -> tuple[bool, str]:
        """(True, "") when the task can run here, else (False, one line saying what is missing and the
        command that installs it); checked before a case trains or evaluates."""
        return True, ""

    def report_sections(self, frame) -> list[Section]:
        """Its part of the report from the rows of its cases (a pandas DataFrame); none by default."""
        return []


_TASKS: dict[str, Task | Callable[[], Task]] = {}


def register_task(name: str, task: Task | Callable[[], Task]) -> None:
    """Register `task` (a Task, or a zero-argument function that builds one on first use) under `name`.
    A second registration of a name replaces the first (a suite plugin may override a task)."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"task name must be an identifier, got name={name!r}")
    if not isinstance(task, Task) and not callable(task):
        raise ValueError(f"task {name!r}: must be a Task or a function returning one, got {task!r}")
    _TASKS[name] = task


def get_task(name: str) -> Task:
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(_TASKS)}")
    task = _TASKS[name]
    if not isinstance(task, Task):
        task = task()
        if not isinstance(task, Task):
            raise ValueError(f"task {name!r}: its factory returned {task!r}, not a Task")
        _TASKS[name] = task
    return task


def list_tasks() -> list[str]:
    """Registered names, in registration order."""
    return list(_TASKS)


def attention_label(n_hashes) -> str:
    """How a task's attention setting is named: 0 (or None) hash rounds is full attention."""
    return "full attention" if not n_hashes else f"LSH-{int(n_hashes)}"

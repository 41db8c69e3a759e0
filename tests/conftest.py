"""The project's pytest setup lives in harness.pytest_plugin (--benchmark, max_memory, machine info);
pytester drives that plugin in throwaway sessions in tests/test_gate.py."""
import pytest
import torch

pytest_plugins = ["harness.pytest_plugin", "pytester"]


@pytest.fixture
def tables_restored():
    """A plugin's parameters and metrics join this process's tables: take them out again afterwards,
    so that later tests (and the rows they expect) see the built-in tables."""
    from harness.measure import metrics
    from harness.suite import parameters

    saved_parameters = dict(parameters.PARAMETERS_TABLE)
    saved_metrics, saved_measurements = dict(metrics.METRICS), list(metrics.MEASUREMENTS)
    yield
    parameters.PARAMETERS_TABLE.clear()
    parameters.PARAMETERS_TABLE.update(saved_parameters)
    metrics.METRICS.clear()
    metrics.METRICS.update(saved_metrics)
    metrics.MEASUREMENTS[:] = saved_measurements


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: its tensors are small, and extra threads only add
    synchronisation (and stall on a busy machine); training is deterministic for one thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

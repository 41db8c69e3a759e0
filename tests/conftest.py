"""The project's pytest setup lives in harness.pytest_plugin (--benchmark, max_memory, machine info);
pytester drives that plugin in throwaway sessions in tests/test_gate.py."""
import pytest
import torch

pytest_plugins = ["harness.pytest_plugin", "pytester"]


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: its tensors are small, and extra threads only add
    synchronisation (and stall on a busy machine); training is deterministic for one thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

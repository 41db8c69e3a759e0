"""The project's pytest setup lives in harness.pytest_plugin (--benchmark, max_memory, machine info);
pytester drives that plugin in throwaway sessions in tests/test_gate.py."""
pytest_plugins = ["harness.pytest_plugin", "pytester"]

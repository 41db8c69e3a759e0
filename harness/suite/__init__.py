"""Suites: TOML files -> cases (harness.suite.load) of one measurement each (harness.suite.case)."""
from .case import PARAMETERS, ROW_PARAMETERS, Case, case_id
from .load import SETTINGS, Suite, expand_suite, import_plugins, load_suite

__all__ = ["PARAMETERS", "ROW_PARAMETERS", "SETTINGS", "Case", "Suite", "case_id", "expand_suite", "import_plugins",
           "load_suite"]

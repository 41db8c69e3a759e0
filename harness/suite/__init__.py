"""Suites: TOML files (harness.suite.read) -> expanded (harness.suite.expand) and built
(harness.suite.build) cases of one measurement each (harness.suite.case), whose parameters the table
harness.suite.parameters declares."""
from .case import Case, case_id
from .expand import Suite, expand_suite
from .parameters import Parameter, register_parameter
from .read import load_suite
from .settings import SETTINGS

__all__ = ["SETTINGS", "Case", "Parameter", "Suite", "case_id", "expand_suite", "load_suite", "register_parameter"]

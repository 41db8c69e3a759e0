"""Tasks a model is trained on and evaluated with, by name (a suite's `task` parameter and [task] table).

A task module offers resolve_table(table) (its [task] keys, checked, with defaults) and task_of(table)
(.seq_len), and what harness.run.task_case runs: training and evaluation."""
from . import duplication

TASKS = {"duplication": duplication}

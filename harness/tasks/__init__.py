"""Tasks a model is trained on and evaluated with, by name (a suite's `task` parameter and [task] table):
the protocol and registry (harness.tasks.registry), the shared trainer (harness.tasks.training) and the
built-in tasks, each a module of its own registered here. Importing this package imports no torch: a
built-in task's module loads on first use."""
from .registry import (
    Chart,
    Evaluation,
    Section,
    Table,
    Task,
    TaskRun,
    TaskShape,
    Text,
    attention_label,
    get_task,
    list_tasks,
    register_task,
)

__all__ = ["Chart", "Evaluation", "Section", "Table", "Task", "TaskRun", "TaskShape", "Text", "attention_label",
           "get_task", "list_tasks", "register_task"]


def _duplication() -> Task:
    from .duplication import TASK

    return TASK


register_task("duplication", _duplication)


def _lm() -> Task:
    from .lm import TASK

    return TASK


register_task("lm", _lm)

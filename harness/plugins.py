"""The one place that imports a suite's plugin modules (they register backends, metrics and case
parameters): the suite loader, the worker, the Ray task and the results reader all call it."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

from .errors import UserError


def import_plugins(plugins: tuple[str, ...], plugin_dir: str | None) -> None:
    """Import a suite's plugin modules from plugin_dir (the suite file's folder); errors propagate."""
    if plugin_dir and plugin_dir not in sys.path:
        sys.path.insert(0, plugin_dir)
    for module in plugins:
        importlib.import_module(module)


def register_plugins(plugins: tuple[str, ...], plugin_dir: str | None, where: str) -> None:
    """Import them for a suite file (so that validation knows their backends and parameters): a plugin
    that fails to import, whatever it raises, is a UserError naming it and the error."""
    for module in plugins:
        try:
            import_plugins((module,), plugin_dir)
        except ImportError as exc:
            raise UserError(f"{where}: [suite] plugins: cannot import {module!r} from "
                            f"{plugin_dir}: {_one_line(exc)}") from None
        except (Exception, SystemExit) as exc:  # a plugin's own bug: name it, no traceback
            raise UserError(f"{where}: [suite] plugins: importing {module!r} from {plugin_dir} "
                            f"failed: {type(exc).__name__}: {_one_line(exc)}") from None


def import_run_plugins(run: dict) -> None:
    """Import the plugins a run's suite named (they may declare metrics and parameters its rows carry),
    where they can still be found; a plugin that cannot be imported leaves its keys shown as plain keys."""
    settings = run.get("settings") or {}
    plugins, suite_file = settings.get("plugins") or (), run.get("suite_file")
    if not plugins or not suite_file:
        return
    try:
        import_plugins(tuple(plugins), str(Path(suite_file).resolve().parent))
    except Exception:  # showing results must not depend on a plugin still importing
        pass


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:500]

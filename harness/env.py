"""Environment metadata recorded in every run.json: what produced the numbers."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def environment(worker_threads: int | None = None) -> dict:
    """git commit, package versions, device name and driver, CPU model and thread counts.

    worker_threads: the intra-op threads the suite gives each worker (None: torch's default, which
    is what a fresh process gets)."""
    import torch

    info = {
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": _git_dirty(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        **{package.replace("-", "_"): package_version(package) for package in backend_packages()},
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": worker_threads or torch.get_num_threads(),  # what each worker runs with
        "cuda_available": torch.cuda.is_available(),
        "torch_cuda": torch.version.cuda,
        "device_name": None,
        "driver": None,
    }
    if torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(0)
        info["device_count"] = torch.cuda.device_count()
        info["driver"] = nvidia_driver()
    else:
        info["device_name"] = info["cpu_model"]
    return info


def backend_packages() -> list[str]:
    """The distributions the registered backends need beyond torch, whose versions every run records."""
    import impls

    return sorted({p for name in impls.list_backends() for p in impls.backend_info(name).requires})


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def nvidia_driver() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # noqa: BLE001 -- no library, no driver or an NVML error: the field is unknown
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _git_dirty() -> bool | None:
    status = _git("status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status)


def main() -> None:  # pragma: no cover - a convenience: python -m harness.env
    import json

    json.dump(environment(), sys.stdout, indent=2)
    print()


if __name__ == "__main__":  # pragma: no cover
    main()

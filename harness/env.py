"""Facts about the machine, in one place: the environment every run.json records (what produced the
numbers), the node fields of every row (where a case ran), and how to read them back.

Rows carry `node` (the host name) and `node_gpu` (the GPU's name for a CUDA case, else null) as fields of
their own; run.json's environment carries `git_commit` and `device_name` (the GPU's name where CUDA is
available, else the CPU model)."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


def environment(worker_threads: int | None = None) -> dict:
    """git commit, package versions, device name and driver, CPU model and thread counts.

    worker_threads: the intra-op threads the suite gives each worker (None: torch's default, which
    is what a fresh process gets)."""
    import torch

    info = {
        "git_commit": git_commit(),
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


def node_facts(device: str) -> dict[str, str | None]:
    """Where a case runs, as its row's fields: `node`, the host name, and `node_gpu`, for a CUDA case the
    GPU's name (NVML), else None. Asked of NVML, not torch, so that the launcher creates no CUDA context
    on the GPU its worker measures."""
    return {"node": socket.gethostname(),
            "node_gpu": nvml_gpu_name(device) if str(device).startswith("cuda") else None}


def describe_node(facts: dict[str, Any]) -> str:
    """A row's node fields as one phrase for messages: "gpu-3 (NVIDIA H200)", or the host alone."""
    host, gpu = facts.get("node"), facts.get("node_gpu")
    return f"{host} ({gpu})" if gpu else str(host)


def row_gpu_name(row: dict[str, Any]) -> str | None:
    """The GPU a row ran on (its `node_gpu`): on a Ray cluster the worker's, not the driver's."""
    gpu = row.get("node_gpu")
    return gpu if isinstance(gpu, str) and gpu else None


def recorded_gpu_name(run: dict[str, Any]) -> str | None:
    """The GPU name a run.json's environment recorded (its device_name; None where there is none)."""
    environment = run.get("environment")
    name = environment.get("device_name") if isinstance(environment, dict) else None
    return name if isinstance(name, str) and name else None


def recorded_commit(run: dict[str, Any]) -> str | None:
    """The commit a run.json's environment recorded, else this checkout's."""
    environment = run.get("environment")
    commit = environment.get("git_commit") if isinstance(environment, dict) else None
    return commit if isinstance(commit, str) and commit else git_commit()


def cuda_gpu_name(device: str = "cuda") -> str | None:
    """The name torch gives the CUDA device `device` here, or None without CUDA."""
    import torch

    return torch.cuda.get_device_name(torch.device(device)) if torch.cuda.is_available() else None


def cuda_gpu_names() -> list[str]:
    """The names of the CUDA devices torch sees here (empty without CUDA)."""
    import torch

    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() \
        else []


def nvml_gpu_name(device: str) -> str | None:
    """The name of the GPU `device` (cuda, cuda:N) means to a process started here, or None.

    CUDA_VISIBLE_DEVICES (set by Ray for its tasks) maps torch's index to a physical one; an index
    is taken as NVML's, which matches CUDA's order where CUDA_DEVICE_ORDER=PCI_BUS_ID or all of a
    node's GPUs are of one model."""
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            if visible is None:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            else:
                ids = [part.strip() for part in visible.split(",") if part.strip()]
                if index >= len(ids):
                    return None
                ident = ids[index]
                handle = (pynvml.nvmlDeviceGetHandleByIndex(int(ident)) if ident.isdigit()
                          else pynvml.nvmlDeviceGetHandleByUUID(ident))
            name = pynvml.nvmlDeviceGetName(handle)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no library, no driver, no such GPU: the host name alone
        return None
    return name.decode() if isinstance(name, bytes) else str(name)


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
    except Exception:  # no library, no driver or an NVML error: the field is unknown
        return None


def git_commit() -> str | None:
    """This checkout's commit (None outside a git checkout)."""
    return _git("rev-parse", "HEAD")


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

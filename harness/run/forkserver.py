"""The fork server: one process per run and worker environment that has imported torch, the harness
and the built-in backends' modules, and forks one worker per case (`run --launch fork`).

A fresh interpreter per case (`--launch spawn`) pays the interpreter's start and every import again for
each case; a forked worker starts from the server's imported, but unused, state. The server runs no
torch op, never initialises CUDA and starts no thread pool of torch's, so that each child begins as a
spawned worker would after its imports: allocator, compile caches and RNGs untouched, intra-op threads
not yet started (the child's torch.set_num_threads decides). The server is started with the worker
environment that must hold at import time (the Triton interpreter's TRITON_INTERPRET, which decides
what @triton.jit builds): one server per distinct such environment (harness.run.launch).

Protocol, one JSON object per line. The launcher writes a request {case_file, result_file, log_file,
spawned_at, env} to the server's stdin; the server forks, answers {"pid": PID}, waits for the child and
answers {"pid": PID, "returncode": CODE} (negative: killed by that signal, as subprocess reports it).
One child at a time. The child makes its own session (a timeout kills its whole process tree and
nothing else), dies with the server (PR_SET_PDEATHSIG), writes its output to log_file, takes env as
its whole environment (the case's own inductor / Triton cache directories, the run directory), reseeds
the RNGs a fresh interpreter seeds from the OS, and runs harness.run.worker.main. The server dies with
the runner; a server that dies is the running case's crashed row and the next case's new server.
"""
from __future__ import annotations

import importlib
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Imported by the server once; what a case imports beyond them (a peer's package, a suite's plugins)
# it imports itself. torch._dynamo / torch._inductor: the profiler of the memory pass imports them.
SERVER_MODULES = (
    "numpy", "torch", "torch._dynamo", "torch._inductor", "torch.profiler", "torch.utils.flop_counter",
    "multiprocessing", "memory_profiler",
    "impls", "impls.eager", "impls.dense", "impls.compiled", "impls.triton_lsh",
    "harness.results.store", "harness.measure.stages", "harness.measure.memory", "harness.measure.timing",
    "harness.measure.flops", "harness.measure.fidelity", "harness.measure.workload", "harness.plugins",
    "harness.suite", "harness.inputs", "harness.tasks", "harness.run.task_case", "harness.run.worker",
)
# Modules the server goes without where they cannot be imported (their backends then say why in the case).
OPTIONAL_MODULES = ("memory_profiler", "impls.triton_lsh")
# Seconds a server may take to import SERVER_MODULES before its start counts as failed.
READY_TIMEOUT_S = 300.0
# Seconds between a request and the server's answer with the child's pid.
FORK_TIMEOUT_S = 30.0
# Characters of the server's own output kept in the reason of a row whose server died.
SERVER_TAIL_CHARS = 300


class ServerDied(Exception):
    """The fork server ended (or never became ready); the message says what it printed last."""


class ForkServer:
    """The launcher's handle on one server process (started at construction, ready when it returns)."""

    def __init__(self, env: dict[str, str]) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="reformer-bench-forkserver-")
        tmp = Path(self._tmp.name)
        env = dict(env)
        # Whatever the imports might write to a compile cache lands here, never in a case's.
        env["TORCHINDUCTOR_CACHE_DIR"] = str(tmp / "inductor-cache")
        env["TRITON_CACHE_DIR"] = str(tmp / "triton-cache")
        self._log_path = tmp / "server.log"
        self._buffer = b""
        with open(self._log_path, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "harness.run.forkserver", str(os.getpid())],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env, start_new_session=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None  # both PIPE above
        self._requests, self._replies = self.proc.stdin, self.proc.stdout
        try:
            self.ready = self._reply(READY_TIMEOUT_S, "its start")
        except BaseException:
            self.close()
            raise

    def alive(self) -> bool:
        return self.proc.poll() is None

    def fork(self, case_file: Path, result_file: Path, log_file: Path, spawned_at: float,
             env: dict[str, str]) -> ForkedChild:
        """Ask for one child running the case; returns it once it is forked."""
        request = {"case_file": str(case_file), "result_file": str(result_file), "log_file": str(log_file),
                   "spawned_at": spawned_at, "env": env}
        try:
            self._requests.write((json.dumps(request) + "\n").encode())
            self._requests.flush()
        except (BrokenPipeError, OSError):
            raise ServerDied(self._death("the request")) from None
        pid = self._reply(FORK_TIMEOUT_S, "the fork")["pid"]
        return ForkedChild(self, pid)

    def _reply(self, timeout_s: float | None, during: str) -> dict:
        """The server's next line; subprocess.TimeoutExpired after timeout_s, ServerDied at its end."""
        fd = self._replies.fileno()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            readable, _, _ = select.select([fd], [], [], remaining)
            if not readable and timeout_s is not None:  # without a timeout, select returns only when readable
                raise subprocess.TimeoutExpired("fork server", timeout_s)
            chunk = os.read(fd, 65536)
            if not chunk:
                raise ServerDied(self._death(during))
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def _death(self, during: str) -> str:
        try:
            code = self.proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            code = None
        how = ("exited" if code is None else
               f"was killed by signal {-code}" if code < 0 else f"exited with code {code}")
        tail = " | ".join(line.strip() for line in self._log_path.read_text(errors="replace").splitlines()
                          if line.strip())[-SERVER_TAIL_CHARS:] if self._log_path.exists() else ""
        return f"the fork server {how} during {during}" + (f": {tail}" if tail else "")

    def close(self) -> None:
        """End the server (its stdin's end ends its loop) and remove its directory."""
        if self.proc.poll() is None:
            try:
                self._requests.close()
                self.proc.wait(timeout=5.0)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for stream in (self._requests, self._replies):
            try:
                stream.close()
            except OSError:
                pass
        self._tmp.cleanup()


class ForkedChild:
    """A case's process forked by a server: pid (its process group's id too) and wait(timeout), as
    subprocess.Popen offers them to the launcher."""

    args = "fork server child"

    def __init__(self, server: ForkServer, pid: int) -> None:
        self.server = server
        self.pid = pid
        self.returncode: int | None = None

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = self.server._reply(timeout, "a case")["returncode"]
        return self.returncode


# -- the server process ----------------------------------------------------------------------------


def serve(runner_pid: int) -> int:
    from .worker import die_with_parent

    die_with_parent(runner_pid)
    for name in SERVER_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            if name not in OPTIONAL_MODULES:
                raise
    import torch

    out = sys.stdout.buffer

    def answer(message: dict) -> None:
        out.write((json.dumps(message) + "\n").encode())
        out.flush()

    answer({"ready": os.getpid(), "cuda_initialized": torch.cuda.is_initialized(),
            "threads": len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else None})
    server_pid = os.getpid()
    for line in sys.stdin.buffer:
        request = json.loads(line)
        if torch.cuda.is_initialized():  # a child would inherit a CUDA context it cannot use
            print("fork server: CUDA was initialised in the server; refusing to fork", file=sys.stderr)
            return 1
        pid = os.fork()
        if pid == 0:
            _child(request, server_pid)  # never returns
        answer({"pid": pid})
        _, status = os.waitpid(pid, 0)
        answer({"pid": pid, "returncode": os.waitstatus_to_exitcode(status)})
    return 0


def _child(request: dict, server_pid: int) -> None:
    """The forked worker: its own session, output and environment, then the worker's main; exits."""
    code = 1
    try:
        os.setsid()
        from .worker import die_with_parent, main

        die_with_parent(server_pid)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        log = os.open(request["log_file"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(devnull)
        os.close(log)
        os.environ.clear()
        os.environ.update(request["env"])
        _reseed_from_os()
        code = main([request["case_file"], request["result_file"], repr(request["spawned_at"])])
    except BaseException:  # whatever happens, the child must not return into the server's loop
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _reseed_from_os() -> None:
    """The global RNGs (Python's, numpy's, torch's) as a fresh interpreter has them: seeded from the OS,
    not the server's state that every child would otherwise share. A case's own draws (inputs, weights,
    hash rotations) come from its seed, as under spawn."""
    import random

    random.seed()
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    if "torch" in sys.modules:
        sys.modules["torch"].seed()


if __name__ == "__main__":
    sys.exit(serve(int(sys.argv[1])))

"""Runs a sweep's cases as tasks on a Ray cluster: `reformer-bench run SUITE --ray ADDRESS`.

Each case is one Ray task that runs harness.run.launch.run_case_in_worker on the node Ray picks: the
same fresh worker process per case as on this machine, with the same statuses, timeouts and isolation.
Ray only places the tasks; there is no scheduler of our own. Resources per task (task_resources):
  - a CUDA case: one GPU (Ray sets CUDA_VISIBLE_DEVICES to it), and the suite's threads in CPUs (1 if unset);
  - a CPU case: --ray-cpus-per-case CPUs; by default the suite's threads, or, where the suite leaves
    threads unset (torch then uses every core), the CPUs of the largest node: a whole node, as on
    this machine, where one case runs at a time.
A task first reports that it started (and on which node), then returns its row; the driver appends
rows as tasks end, in completion order (runner.ResultsWriter). Failures keep the local meaning: no
Ray retry of a measured case (max_retries=0, retry_exceptions=False); a task whose Ray worker or node
dies is a `crashed` row saying so; a CUDA case that no node can place (no GPU in the cluster) is
`unavailable`. close() (Ctrl-C included) cancels the outstanding tasks: a cancelled task raises
KeyboardInterrupt in its launcher, which kills its worker's process group. A killed driver loses
only the cases still running (Ray ends a dead driver's tasks, and a worker dies with its launcher);
`--resume` runs them again.

Every node needs this project (the same commit, with the suite's plugins at the same path) in the
Python environment that runs `ray start`. Ray is an optional extra (`pip install -e '.[ray]'`) and
is imported only inside the functions here.
"""
from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from ..env import describe_node
from ..errors import UserError
from ..results.store import new_row
from ..suite import Case
from . import launch

EXTRA = "pip install -e '.[ray]'"
# Seconds a cancelled task gets, beyond the launcher's own grace period, to kill its worker before
# it is force-killed (its worker then dies with it: PR_SET_PDEATHSIG).
CANCEL_SLACK_S = 3.0
# Seconds to wait for a TCP connection to the cluster's head before ray.init, which would otherwise
# retry an address nobody answers on for minutes.
CONNECT_TIMEOUT_S = 5.0
# Characters of a Ray error kept in a crashed row's reason.
REASON_CHARS = 400


def import_ray():
    """The ray module, or a UserError naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise UserError(f"--ray needs Ray, which is not installed here: {EXTRA} (the `ray` extra)") from None
    return ray


def parse_address(address: str) -> str:
    """auto | local | HOST:PORT, checked; anything else is a UserError naming the value."""
    if address in ("auto", "local"):
        return address
    host, sep, port = address.rpartition(":")
    if sep and host and port.isdigit() and 0 < int(port) < 65536 and "/" not in host:
        return address
    raise UserError(f"--ray {address!r}: expected auto, local or HOST:PORT (the head node's GCS port, "
                    f"e.g. 10.0.0.1:6379)")


def task_resources(case: Case, cpus_per_case: int | None, largest_node_cpus: float) -> dict:
    """The Ray resources of one case's task (see the module docstring)."""
    if case.device.startswith("cuda"):
        return {"num_gpus": 1, "num_cpus": case.threads or 1}
    if cpus_per_case is not None:
        return {"num_cpus": cpus_per_case, "num_gpus": 0}
    # A case may ask for more threads than any node has (it would oversubscribe locally too).
    return {"num_cpus": min(case.threads or largest_node_cpus, largest_node_cpus), "num_gpus": 0}


def unplaceable(resources: dict, nodes: list[dict]) -> str | None:
    """Why no alive node can run a task needing `resources`, or None when one can."""
    cpus, gpus = resources["num_cpus"], resources["num_gpus"]
    if any(n.get("CPU", 0) >= cpus and n.get("GPU", 0) >= gpus for n in nodes):
        return None
    if gpus:
        most = max((n.get("GPU", 0) for n in nodes), default=0)
        return ("no node of the Ray cluster has a GPU" if not most else
                f"no node of the Ray cluster has a GPU and {cpus:g} CPUs")
    most = max((n.get("CPU", 0) for n in nodes), default=0)
    return f"no node of the Ray cluster has {cpus:g} CPUs (the largest has {most:g})"


def _case_task(case: Case, run_dir: str | None = None):
    """Runs on a Ray node: says where it runs, then runs the case in a fresh worker process there."""
    from ..env import node_facts
    from ..plugins import import_plugins

    node = node_facts(case.device)
    yield "started", node
    if case.plugins:  # their backends' metadata (launch reads it); the driver imported them when it loaded the suite
        import_plugins(case.plugins, case.plugin_dir)
    # A task case keeps its checkpoints in the run directory: on a cluster it must be a shared one.
    # Spawned, not forked: a fork server would live on in the Ray worker process between tasks, with
    # no point at which the run could end it.
    row = launch.run_case_in_worker(case, None if run_dir is None else Path(run_dir), launch="spawn")
    row.update(node)
    yield "row", row


class RayExecutor:
    """The runner's executor (see harness.run.runner.LocalExecutor) on a Ray cluster."""

    run_dir = None  # set by the runner; handed to every task (a task case's checkpoints)
    launch_method = "spawn"  # see _case_task
    on_progress = None  # a worker's progress lines stay on its node
    def __init__(self, address: str, cpus_per_case: int | None = None) -> None:
        self.address = parse_address(address)
        if cpus_per_case is not None and cpus_per_case < 1:
            raise UserError(f"--ray-cpus-per-case must be a positive integer, got {cpus_per_case}")
        self.cpus_per_case = cpus_per_case
        self._ray = import_ray()
        self.name = f"ray {self.address}"
        self._connected = False
        self._pending: dict = {}  # generator of a submitted task -> its case

    def check_cases(self, cases: Iterable[Case]) -> None:
        """Cases a Ray sweep cannot run as written: `cuda:N` names one GPU of this machine, but on
        Ray each CUDA case is given one GPU of its node (which one is Ray's choice)."""
        for case in cases:
            if case.device.startswith("cuda:") and case.device != "cuda:0":
                raise UserError(f"--ray: case {case.case_id} has device={case.device!r}; on Ray each CUDA case "
                                f"gets one GPU of its node, chosen by Ray: use device = \"cuda\"")

    def connect(self) -> None:
        """Join the cluster (or start the local instance); a bad address is a UserError naming it."""
        if self._connected:
            return
        ray = self._ray
        # Task output stays in the cluster's logs: the terminal is the local run's (progress, table).
        common = {"log_to_driver": False, "logging_level": logging.WARNING}
        if self.address != "local":
            self._check_reachable()
        try:
            if self.address == "local":
                ray.init(address="local", include_dashboard=False, **common)
            else:
                ray.init(address=self.address, **common)
        except Exception as exc:  # no cluster, a refused token, ...: the address is the input
            hint = "" if self.address in ("local", "auto") else (
                " (a cluster with token authentication, Ray's default, also needs RAY_AUTH_MODE=token and its "
                "token here: ray get-auth-token)")
            raise UserError(f"--ray {self.address}: cannot connect to a Ray cluster: {_first_line(exc)}"
                            f"{hint}") from None
        self._connected = True
        if self.address == "auto":  # run.json says which cluster that was
            self.name = f"ray auto ({ray.get_runtime_context().gcs_address})"
        largest = max((n.get("CPU", 0) for n in self._nodes()), default=0)
        if self.cpus_per_case is not None and self.cpus_per_case > largest:
            self.close()
            # Ray would queue such tasks for ever, waiting for a node that large to join.
            raise UserError(f"--ray-cpus-per-case {self.cpus_per_case}: no node of the Ray cluster has "
                            f"that many CPUs (the largest has {largest:g})")

    def _check_reachable(self) -> None:
        """Fail fast where no head node answers: ray.init retries such an address for minutes."""
        address = self.address
        if address == "auto":
            try:  # Ray's own lookup (RAY_ADDRESS, then this machine's latest cluster); private, so guarded
                from ray._private.services import canonicalize_bootstrap_address
                found = canonicalize_bootstrap_address("auto")
            except Exception:  # no cluster found, or the lookup moved: ray.init says
                return
            if not found:
                return
            address = found
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
        except OSError as exc:
            found = f" (found by auto: {address})" if self.address == "auto" else ""
            raise UserError(f"--ray {self.address}: no Ray head node answers there{found}: "
                            f"{exc.strerror or type(exc).__name__}") from None

    def _nodes(self) -> list[dict]:
        """The resources of every alive node."""
        return [n.get("Resources", {}) for n in self._ray.nodes() if n.get("Alive")]

    # The runner hands over a case with the case it depends on (a task's training and its evaluations)
    # and calls run with dependency_row: every training of a suite runs at once, each evaluation after
    # its own training.
    runs_dependents = True

    def run(self, cases: Iterable[Case], started: Callable[[Case], None], *,
            dependency_row: Callable[[Case], dict | None]) -> Iterator[tuple[Case, dict]]:
        """Submit every case at once, except those whose dependency is among these cases: each waits
        until that one's row has been yielded, then dependency_row(case) says whether it runs (None)
        or gives its row. The consumer must record each row before it asks for the next (the runner
        does): dependency_row reads the ended cases' statuses from that record."""
        ray = self._ray
        self.connect()
        task = ray.remote(num_returns="streaming", max_retries=0, retry_exceptions=False)(_case_task)
        nodes = self._nodes()
        largest_cpus = max((n.get("CPU", 0) for n in nodes), default=0)
        pending = self._pending
        cases = list(cases)
        given = {case.case_id for case in cases}
        unended = set(given)
        held: list[Case] = []  # waiting for the case they depend on

        def submit(case: Case) -> dict | None:
            """Submit the case; its row instead where it cannot run."""
            resources = task_resources(case, self.cpus_per_case, largest_cpus)
            reason = unplaceable(resources, nodes)
            if reason is not None:  # a device the cluster lacks, as a local run without CUDA
                return _unavailable_row(case, reason)
            run_dir = str(self.run_dir.resolve()) if self.run_dir else None
            pending[task.options(name=case.case_id, **resources).remote(case, run_dir)] = case
            return None

        def release(ended: str) -> Iterator[tuple[Case, dict]]:
            """The cases that waited for `ended`: submitted, or their rows where they cannot run."""
            unended.discard(ended)
            for case in [c for c in held if c.depends_on == ended]:
                held.remove(case)
                yield from dispatch(case)

        def dispatch(case: Case) -> Iterator[tuple[Case, dict]]:
            """Submit a case whose dependency (if among these cases) has ended; its row where it cannot run."""
            row = dependency_row(case) if case.depends_on in given else None
            if row is None:
                row = submit(case)
            if row is not None:
                started(case)
                yield case, row
                yield from release(case.case_id)

        for case in cases:
            if case.depends_on in unended:
                held.append(case)
            else:
                yield from dispatch(case)
        where: dict = {}  # generator -> (node facts, monotonic time its case started)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for gen in ready:
                case = pending[gen]
                try:
                    kind, value = ray.get(next(gen))
                except StopIteration:  # cannot happen: the task yields its row last
                    kind, value = "failed", RuntimeError("the task ended without a row")
                except ray.exceptions.RayError as exc:
                    kind, value = "failed", exc
                if kind == "started":
                    where[gen] = (value, time.monotonic())
                    started(case)
                    continue
                del pending[gen]
                if kind == "failed":
                    value = _failure_row(case, value, *where.get(gen, (None, None)))
                yield case, value
                yield from release(case.case_id)

    def close(self) -> None:
        """Cancel what is still outstanding and leave the cluster (stopping a local instance)."""
        if not self._connected:
            return
        ray = self._ray
        try:
            if self._pending:
                self._cancel(list(self._pending))
                self._pending.clear()
        finally:
            self._connected = False
            ray.shutdown()

    def _cancel(self, outstanding: list) -> None:
        """Cancel tasks and wait for each to end (its worker killed by its launcher), force-killing
        those that have not ended after the grace period. Rows that arrive meanwhile are not kept:
        as locally, Ctrl-C gives up the running cases, and --resume runs them again."""
        ray = self._ray
        for gen in outstanding:
            ray.cancel(gen)  # KeyboardInterrupt in the task: its launcher kills the worker's group
        deadline = time.monotonic() + launch.KILL_GRACE_S + CANCEL_SLACK_S
        live = list(outstanding)
        while live and time.monotonic() < deadline:
            # A generator is ready when its next item is: consume items until the task's end shows.
            ready, _ = ray.wait(live, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            for gen in ready:
                try:
                    ray.get(next(gen))
                except (StopIteration, ray.exceptions.RayError):
                    live.remove(gen)
        for gen in live:
            ray.cancel(gen, force=True)  # kills its Ray worker; the case's worker dies with it


def _unavailable_row(case: Case, reason: str) -> dict:
    row = new_row(case)
    row["status"] = "unavailable"
    row["reason"] = reason
    row["stage"] = "not started"
    return row


def _failure_row(case: Case, exc: BaseException, node: dict | None, since: float | None) -> dict:
    """The row of a task that failed in Ray rather than in its worker: `crashed`, saying how."""
    errors = import_ray().exceptions

    def kind(*names: str) -> tuple[type, ...]:  # some of these are younger than the oldest Ray allowed
        return tuple(getattr(errors, name) for name in names if hasattr(errors, name))

    on = f" on {describe_node(node)}" if node else ""
    if isinstance(exc, kind("NodeDiedError")):
        what = f"the Ray node running the case{on} was lost"
    elif isinstance(exc, kind("OutOfMemoryError")):
        what = f"Ray's memory monitor{on} killed the case's task (the node ran low on memory)"
    elif isinstance(exc, kind("WorkerCrashedError", "LocalRayletDiedError")):
        what = f"the Ray worker running the case{on} died"
    elif isinstance(exc, kind("TaskCancelledError")):
        what = f"the Ray task{on} was cancelled from outside this sweep"
    elif node is None:
        what = "the Ray task could not start"
    else:
        what = f"the Ray task failed{on}"
    cause = getattr(exc, "cause", None) if isinstance(exc, kind("RayTaskError")) else None
    detail = _first_line(cause if cause is not None else exc)
    row = new_row(case)
    row["status"] = "crashed"
    row["reason"] = f"{what}: {detail}"[:REASON_CHARS]
    row["stage"] = None if node else "not started"  # where the worker was is in the node's logs only
    if node:
        row.update(node)
    if since is not None:
        row["wall_s"] = time.monotonic() - since
    return row


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__

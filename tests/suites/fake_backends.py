"""Backends that fail on purpose, registered by suites that list `plugins = ["fake_backends"]`.

Each one fails in one way the runner must turn into a row: raise, hang, die, return NaN, or not be
available. They are "dense" backends so that no LSH parameters or fidelity pass are involved.
"""
import os
import signal
import time

import torch

from impls import register_backend


class _Fake:
    def __init__(self, name, attend, available=(True, "")):
        self.name = name
        self._attend = attend
        self._available = available

    def available(self):
        return self._available

    def attend(self, qk, v, cfg):
        return self._attend(qk, v)


def _raise(qk, v):
    raise RuntimeError("fake_raises: deliberate failure")


def _hang(qk, v):
    time.sleep(3600)


def _die(qk, v):
    os.kill(os.getpid(), signal.SIGKILL)


def _nan(qk, v):
    return torch.full_like(v, float("nan"))


register_backend("fake_raises", lambda: _Fake("fake_raises", _raise), kind="dense")
register_backend("fake_hangs", lambda: _Fake("fake_hangs", _hang), kind="dense")
register_backend("fake_dies", lambda: _Fake("fake_dies", _die), kind="dense")
register_backend("fake_nan", lambda: _Fake("fake_nan", _nan), kind="dense")
register_backend("fake_unavailable",
                 lambda: _Fake("fake_unavailable", _nan, available=(False, "fake_unavailable: not on this machine")),
                 kind="dense")

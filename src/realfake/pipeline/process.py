"""The stage process and its relatives: signals, the DVC process that started it, and whether a process still lives.

A stage must die with the `dvc repro` that started it: otherwise a killed DVC leaves a trainer behind that keeps
writing outputs and registering models. Linux's parent-death signal covers the direct parent; a watcher thread
covers the shells that may sit between DVC and the stage. Both end the stage by SIGTERM, which `on_sigterm` turns
into a `Terminated` exception, so the stage's `finally` blocks run (temporary files removed, MLflow run KILLED).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "fish", "busybox"})
_PR_SET_PDEATHSIG = 1


class Terminated(BaseException):
    """SIGTERM arrived: unwind like KeyboardInterrupt (a BaseException, so `except Exception` does not swallow it)."""


_shield = {"depth": 0, "pending": None}


def _raise_terminated(signum, frame):
    # Once: a second SIGTERM (the parent-death signal and the watcher both send one) must not interrupt the cleanup
    # that the first one started (removing temporary files, ending the MLflow run KILLED).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    message = f"stopped by signal {signal.Signals(signum).name}"
    if _shield["depth"]:
        _shield["pending"] = message  # raised when the shielded call returns
        return
    raise Terminated(message)


@contextlib.contextmanager
def shielded():
    """Hold SIGTERM's `Terminated` until the block ends. An exception raised inside a store write can leave its
    database connection holding a write lock, and the stage could then not mark its own run KILLED."""
    _shield["depth"] += 1
    try:
        yield
    finally:
        _shield["depth"] -= 1
        if not _shield["depth"] and (message := _shield["pending"]):
            _shield["pending"] = None
            raise Terminated(message)


def on_sigterm() -> None:
    """Turn SIGTERM into a `Terminated` exception in the main thread."""
    signal.signal(signal.SIGTERM, _raise_terminated)


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live process, from /proc; None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name, in parentheses, may hold spaces
    if fields[0] == "Z":  # a zombie has ended
        return None
    return int(fields[1]), int(fields[19])


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def identity(pid: int) -> str | None:
    """ "pid:start" of a live process (a pid alone can be reused); None when it is gone or /proc is missing."""
    stat = _stat(pid)
    return None if stat is None else f"{pid}:{stat[1]}"


def alive(ident: str) -> bool:
    """Whether the process `identity()` named is still running (True where /proc cannot tell)."""
    if not Path("/proc").is_dir():
        return True
    pid = int(ident.split(":")[0])
    return identity(pid) == ident


def launcher_chain() -> list[str]:
    """Identities of this process's ancestors up to and including the first one that is not a shell (DVC)."""
    chain = []
    pid = os.getppid()
    while pid > 1 and (ident := identity(pid)):
        chain.append(ident)
        if _name(pid) not in SHELLS:
            break
        pid = _stat(pid)[0]
    return chain


def die_with_launcher(poll_seconds: float = 1.0) -> None:
    """SIGTERM this process as soon as its launcher (see `launcher_chain`) or any shell in between ends."""
    with contextlib.suppress(OSError, AttributeError):  # the kernel signals us when the parent dies, even by SIGKILL
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    chain = launcher_chain()
    if not chain:
        return

    def watch():
        while all(alive(ident) for ident in chain):
            time.sleep(poll_seconds)
        log.error("the process that started this stage has ended; stopping")
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()


def execution_id() -> str | None:
    """An id shared by every stage of one `dvc repro` / `dvc exp run`: DVC's own process; None outside DVC."""
    if "DVC_STAGE" not in os.environ:
        return None
    chain = launcher_chain()
    return chain[-1] if chain else None


def resource_usage(started: float) -> dict[str, float]:
    """Wall time since `started` and the peak resident memory of this process and its finished children."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"wall_seconds": round(time.perf_counter() - started, 2), "peak_rss_mb": round(max(own, children), 1)}


def machine_description() -> str:
    """The hardware a result was measured on, as results name it: the accelerator if Keras' backend sees one, else
    the CPU model and its cores."""
    import platform

    import keras

    devices = []
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        devices = [tf.config.experimental.get_device_details(d).get("device_name", "GPU")
                   for d in tf.config.list_physical_devices("GPU")]  # fmt: skip
    elif keras.backend.backend() == "jax":
        import jax

        devices = [d.device_kind for d in jax.devices() if d.platform != "cpu"]
    if devices:
        return f"{len(devices)} x {devices[0]}"
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()}-core {cpu} CPU"

"""Ctrl-C: it stops a command promptly, in one line, whichever process or library code it lands in.

A terminal's Ctrl-C signals every process of its group. Python runs the handler of this process at its next bytecode,
wherever that is; the commands turn the KeyboardInterrupt into `error: interrupted` and exit status 130.
"""

from __future__ import annotations

import _thread
import contextlib
import ctypes
import os
import signal
import sys
import threading
from collections.abc import Iterator

import psutil


@contextlib.contextmanager
def ctrl_c_is_never_lost() -> Iterator[None]:
    """A KeyboardInterrupt that lands inside a hook Python cannot raise from (an at-fork hook while a pool forks its
    workers, a `__del__`) is only printed as "Exception ignored" and the command runs on as if no key were pressed:
    deliver it again, from another thread a moment later, once that hook has returned (from this one, the handler
    would run at once, inside the hook again)."""
    previous = sys.unraisablehook

    def deliver_again(unraisable) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            threading.Timer(0.05, _thread.interrupt_main).start()  # as if the signal arrived again
        else:
            previous(unraisable)

    sys.unraisablehook = deliver_again
    try:
        yield
    finally:
        sys.unraisablehook = previous


@contextlib.contextmanager
def quiet_workers_on_ctrl_c() -> Iterator[None]:
    """For worker processes forked inside this block (`datasets`' tokenizer pool): each would print a
    KeyboardInterrupt traceback, and one that stops while it holds the pool's queue lock deadlocks the pool. Forked,
    they inherit this handler and ignore the signal; this process raises KeyboardInterrupt as usual, and the pool's
    terminate() stops them on the way out. A Ctrl-C while the pool is still forking leaves it half built and never
    terminated (multiprocessing cleans up after an Exception only), with workers that would wait for work forever:
    whatever this block started and left running when it stops on an error is stopped here, by pid. The pool's own
    thread may still fork a replacement after that, so on Linux each worker also asks the kernel to stop it when
    this process exits (PR_SET_PDEATHSIG): none outlives the command."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield  # ignored (a background job), or someone else's handler: leave it to them
        return
    parent = os.getpid()

    def on_ctrl_c(signum, frame) -> None:
        if os.getpid() == parent:
            raise KeyboardInterrupt

    before = {child.pid for child in psutil.Process().children()}
    signal.signal(signal.SIGINT, on_ctrl_c)
    _die_with_this_process.add(parent)
    try:
        yield
    except BaseException:
        stop([child for child in psutil.Process().children() if child.pid not in before])
        raise
    finally:
        _die_with_this_process.discard(parent)
        signal.signal(signal.SIGINT, signal.default_int_handler)


_die_with_this_process: set[int] = set()  # pids whose children forked now get SIGTERM when it exits
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _on_fork_in_child() -> None:
    if os.getppid() in _die_with_this_process:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


if sys.platform == "linux":
    os.register_at_fork(after_in_child=_on_fork_in_child)


def stop(processes: list[psutil.Process], grace_s: float = 5.0) -> None:
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=grace_s)  # waits for them, so none is left a zombie either
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()

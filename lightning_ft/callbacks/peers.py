"""A lost process stops the whole run at once, named, instead of leaving the others in a collective until the
process group's timeout (30 minutes by default; users report jobs hung for hours after one node died).

Each process of a multi-process run beats in the run's rendezvous store (torch.distributed's TCPStore, which
process 0 hosts) and watches the others' beats. Two ways a peer is lost:
- a collective fails (gloo and NCCL see a closed connection when a process on another node is killed): the
  process whose beats stopped is the one named in the error, `lost rank R (node N, host H, pid P)`;
- nothing fails but a peer falls silent (a node that loses power closes no connection, and the collective would
  wait for the timeout): after `timeout` seconds without its beats the watcher reports it the same way, marks the run
  record failed and ends this process (its main thread may be inside a collective that nothing can interrupt).
A process that raised on its own says so in the store first, and its peers stop with its error. The store itself
gone means process 0 (its host) is. A process that finishes says so too, so no one mistakes its end for a loss.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.distributed import DistError

from lightning_ft.callbacks.preemption import Preempted
from lightning_ft.callbacks.run_record import RunRecord

EXIT_STATUS = 1
STORE_GRACE_S = 5.0  # the store gone: this long for this process to finish too (process 0 may simply end first)

# The watcher talks to the store only while holding this lock, and a fork (a DataLoader starting its workers, each
# epoch) waits for it: a child forked in the middle of a store call hung in os.fork (seen once in a two-node FSDP2
# job: its first DataLoader worker never started, and the job with it).
STORE_CALL = threading.Lock()
os.register_at_fork(
    before=STORE_CALL.acquire, after_in_parent=STORE_CALL.release, after_in_child=STORE_CALL._at_fork_reinit
)


class PeerLost(RuntimeError):
    """Another process of the run is gone (or failed): this one stops too."""


class PeerWatch(Callback):
    """Args:
    interval: seconds between beats.
    timeout: seconds a peer may stay silent, with no collective failing, before it counts as lost (a process
        is never silent that long while alive: the beats come from a thread of their own). Default: the
        LIGHTNING_FT_PEER_TIMEOUT environment variable, or 30.
    """

    def __init__(self, interval: float = 1.0, timeout: float | None = None) -> None:
        self.interval = interval
        self.timeout = timeout or float(os.environ.get("LIGHTNING_FT_PEER_TIMEOUT", "30"))
        self.store = None
        self.rank, self.world_size = 0, 1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen: dict[int, tuple[str, float]] = {}  # peer -> (its last beat, when this process saw it change)

    # -- lifecycle ---------------------------------------------------------------------------------------------------

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if trainer.world_size < 2 or not torch.distributed.is_initialized() or self._thread is not None:
            return
        from torch.distributed import PrefixStore
        from torch.distributed.distributed_c10d import _get_default_store

        self.store = PrefixStore("lightning_ft/peers/", _get_default_store())
        self.rank, self.world_size = trainer.global_rank, trainer.world_size
        node = int(getattr(trainer, "node_rank", 0))
        host = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
        self.store.set(f"who/{self.rank}", json.dumps({"node": node, "host": host, "pid": os.getpid()}))
        self.store.delete_key(f"done/{self.rank}")  # a fit before this one in the same process said it was done
        self._stop.clear()
        self._seen = {}
        self._thread = threading.Thread(target=self._watch, args=(trainer,), name="lightning-ft-peers", daemon=True)
        self._thread.start()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._finish()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """Name the peer behind a failed collective; tell the peers when this process failed on its own."""
        if self.store is None or self._thread is None:
            return
        if not isinstance(exception, Preempted | KeyboardInterrupt):  # those stop every process alike
            lost = getattr(exception, "lost_peer", None) or self._find_lost()
            if lost is not None:
                exception.lost_peer = lost
            else:
                self._try(lambda: self.store.set(f"failed/{self.rank}", f"{type(exception).__name__}: {exception}"))
        self._finish()

    def _finish(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        self._try(lambda: self.store.set(f"done/{self.rank}", "1"))

    # -- watching ----------------------------------------------------------------------------------------------------

    def _watch(self, trainer: Trainer) -> None:
        beats = 0
        while not self._stop.wait(self.interval if beats else 0):
            beats += 1
            try:
                with STORE_CALL:
                    self.store.set(f"beat/{self.rank}", str(beats))
                    lost = self._check(silent_for=self.timeout)
            except DistError:  # the store went with process 0, its host; or process 0 finished first
                if self._stop.wait(STORE_GRACE_S):
                    return  # this process finished too: the run is over, not broken
                lost = self._describe(0, "the rendezvous store it hosts stopped answering")
            if lost is not None and not self._stop.is_set():
                self._give_up(trainer, lost)

    def _check(self, silent_for: float) -> str | None:
        """A peer that failed, or has not beaten for `silent_for` seconds: what to say of it."""
        now = time.monotonic()
        for peer in range(self.world_size):
            if peer == self.rank or self._has(f"done/{peer}"):
                continue
            if self._has(f"failed/{peer}"):
                return self._describe(peer, f"failed: {self.store.get(f'failed/{peer}').decode()}")
            beat = self.store.get(f"beat/{peer}").decode() if self._has(f"beat/{peer}") else ""
            last, since = self._seen.get(peer, (None, now))
            if beat != last:
                self._seen[peer] = (beat, now)
            elif now - since >= silent_for:
                return self._describe(peer, f"no sign of life for {now - since:.0f} s")
        return None

    def _find_lost(self) -> str | None:
        """After a failed collective: the peer that failed or stopped beating (a killed process stops at once, but
        its last beat is fresh: watch a few intervals)."""
        deadline = time.monotonic() + max(5 * self.interval, 3.0)
        while True:
            try:
                lost = self._check(silent_for=3 * self.interval)
            except DistError:
                return self._describe(0, "the rendezvous store it hosts stopped answering")
            if lost is not None or time.monotonic() > deadline:
                return lost
            time.sleep(self.interval / 2)

    def _describe(self, peer: int, what: str) -> str:
        who = self._try(lambda: json.loads(self.store.get(f"who/{peer}")))
        where = f"node {who['node']}, host {who['host']}, pid {who['pid']}" if isinstance(who, dict) else "its host"
        return f"lost rank {peer} ({where}): {what}"

    def _give_up(self, trainer: Trainer, lost: str) -> None:
        """Stop this process from the watcher thread: report, mark the run record failed, exit."""
        print(f"error: {lost}; stopping rank {self.rank} (the last checkpoint stays: rerun to resume)", file=sys.stderr)
        sys.stderr.flush()
        failure = PeerLost(lost)
        failure.lost_peer = lost
        for callback in trainer.callbacks:
            if isinstance(callback, RunRecord):
                callback.on_exception(trainer, trainer.lightning_module, failure)
        os._exit(EXIT_STATUS)

    # -- the store, which may be gone --------------------------------------------------------------------------------

    def _has(self, key: str) -> bool:
        return self.store.check([key])

    @staticmethod
    def _try(action):
        """The action's result, or None when the store is gone."""
        try:
            return action()
        except DistError:
            return None

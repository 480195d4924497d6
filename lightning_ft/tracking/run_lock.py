"""One fit at a time in a run dir: `fit.lock` names the process that holds it (host, pid, start); a second fit
refuses in one line naming it, and a lock whose process is gone (killed, out of memory) is taken over."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from lightning_ft.errors import UserError
from lightning_ft.tracking.process import is_running, this_process

LOCK_FILE = "fit.lock"
WRITE_GRACE_S = 5.0


@contextlib.contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[Path]:
    run_dir.mkdir(parents=True, exist_ok=True)
    path, me = run_dir / LOCK_FILE, this_process()
    while not _create(path, me):
        holder = _holder(path)
        if holder is None and _age_s(path) < WRITE_GRACE_S:
            time.sleep(0.1)  # just created, its content not written yet
            continue
        if holder is not None and is_running(holder):
            raise UserError(
                f"{run_dir} is in use by the fit of pid {holder['pid']} on {holder['host']} ({path}); wait for it "
                "or choose another --trainer.default_root_dir"
            )
        # Gone (or never written whole): set it aside under a name of our own, then create ours afresh. Two fits
        # taking over at once: only one rename finds the file; the other sees the winner's lock next time round.
        aside = path.with_name(f"{LOCK_FILE}.stale.{me['pid']}")
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, aside)
            if _holder(aside) != holder:  # another fit took it over first: its live lock goes back (no clobber)
                with contextlib.suppress(FileExistsError):
                    os.link(aside, path)
            aside.unlink()
    try:
        yield path
    finally:
        if _holder(path) == me:
            path.unlink(missing_ok=True)


def _create(path: Path, me: dict) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as handle:
        json.dump(me, handle)
    return True


def _age_s(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _holder(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None

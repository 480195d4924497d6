"""Writing files so that a crash never leaves a half-written one behind."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from lightning_ft.errors import UserError, find_cause

PARTIAL_SUFFIX = ".partial"  # what a write in progress is called; a crash can leave one behind


def write_atomically(path: Path, write: Callable[[IO], object], mode: str = "wb") -> None:
    """`write(f)` into a temp file next to `path`, which becomes `path` only once complete and on disk (fsynced,
    renamed, folder fsynced).

    Readers (and a resume after a kill or a power loss) see the old file or the whole new one, never a torn one:
    the rename is atomic, and fsync before it keeps the rename from reaching the disk ahead of the data. The temp
    file is hidden (`.NAME.XXXX.partial`), so nothing that globs `*.ckpt` or `*.json` picks it up; it is removed
    when the write fails, and only a kill can leave it (see `remove_partial_files`).
    """
    path = Path(path)
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX)
        os.fchmod(descriptor, FILE_MODE)  # mkstemp's 0600 would hide run files from the team
        with os.fdopen(descriptor, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            write(f)
        commit(Path(temporary), path)
    except BaseException as err:
        if temporary:
            Path(temporary).unlink(missing_ok=True)
        cause = storage_error(err)
        if cause is not None:  # torch.save, for one, turns a full disk into an obscure RuntimeError
            raise UserError(f"cannot write {path}: {cause.strerror} (what was there before is untouched)") from err
        raise


# A file system that cannot take the write: full, over quota, read-only, or not ours to write.
STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def storage_error(err: BaseException) -> OSError | None:
    """The OSError of a full, read-only or forbidden file system somewhere in an exception's chain of causes."""
    return find_cause(err, lambda cause: isinstance(cause, OSError) and cause.errno in STORAGE_ERRORS)


def _umask() -> int:
    mask = os.umask(0)  # reading it means setting it: once, at import, before any thread writes a file
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would have given the file


def partial_path(path: Path) -> Path:
    """Where to write `path` before `commit`, for writers that take a file name rather than a file."""
    return path.with_name(f".{path.name}.{os.getpid()}{PARTIAL_SUFFIX}")


def commit(temporary: Path, path: Path) -> None:
    """Put a fully written temp file in place: fsync its data, rename it over `path`, fsync the folder."""
    fsync_path(temporary)
    os.replace(temporary, path)
    fsync_path(path.parent)


def fsync_path(path: Path) -> None:
    """Flush a file's data to disk; on a folder, its entries (POSIX: a rename is durable once its folder is)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def output_file(path: str, flag: str = "--output") -> Path:
    """A results file a command will write at the end, checked (and its folder made) before any long work starts."""
    output = Path(path)
    if output.is_dir():
        raise UserError(f"{flag}: {output} is a directory; give a file name")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{flag}: cannot create {output.parent}: {err.strerror or err}") from None
    return output


def write_json_atomically(path: Path, data) -> None:
    write_atomically(path, lambda f: json.dump(data, f, indent=2), "w")


def replace_folder(staging: Path, path: Path) -> None:
    """Put a fully written folder in place of `path` (a file or a folder): fsync its files, then rename. A folder
    cannot be renamed over another, so the old one moves aside first; a crash between the two renames leaves no
    `path` at all (a resume falls back to an older checkpoint), never a torn one."""
    for file in staging.rglob("*"):
        if file.is_file():
            fsync_path(file)
    aside = path.with_name(f".{path.name}.old{PARTIAL_SUFFIX}")
    remove_path(aside)
    if path.exists():
        os.replace(path, aside)
    os.replace(staging, path)
    fsync_path(path.parent)
    remove_path(aside)


@contextlib.contextmanager
def staged_folder(path: Path) -> Iterator[Path]:
    """A hidden folder next to `path` to write a whole folder into: it replaces `path` (replace_folder) when the
    block ends, and is removed when the block raises, so `path` is the old folder or the whole new one. Made with
    mkdir, so it takes the umask's mode (mkdtemp's would be private)."""
    staging = partial_path(path)
    remove_path(staging)  # what a killed attempt of this process id left
    staging.mkdir(parents=True)
    try:
        yield staging
        replace_folder(staging, path)
    finally:
        remove_path(staging)


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def remove_partial_files(folder: Path) -> list[Path]:
    """Delete what writes cut short by a kill left (files, or folders of shards, as large as checkpoints)."""
    leftovers = sorted(Path(folder).glob(f".*{PARTIAL_SUFFIX}")) if Path(folder).is_dir() else []
    for path in leftovers:
        remove_path(path)
    return leftovers

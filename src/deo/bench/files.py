"""The bench's files: checked before the work, locked while it runs, replaced atomically.

A bench run or a probe can take minutes to hours; its output must not be lost to a folder it
cannot write, to a second bench writing the same results, or to a crash in mid-write.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".deo-bench.lock"


def ensure_writable_folder(folder: str | Path, option: str) -> Path:
    """Create ``folder`` if needed and prove that a file can be made in it; else raise
    ``PermissionError`` naming ``option``, before any work starts."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".deo-write-check-"):
            pass
    except OSError as error:
        raise PermissionError(f"{option} {str(folder)!r} is not a folder this process can "
                              f"write ({error.strerror or error}); choose another") from error
    return folder


def ensure_writable_file(path: str | Path, option: str) -> Path:
    """The folder of ``path`` must be writable, and ``path`` itself no folder."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{option} {str(path)!r} is a folder; pass a file name")
    ensure_writable_folder(path.parent, option)
    return path


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (``LOCK_FILE`` inside it) for the block; raise
    ``FileExistsError`` naming the process that holds it. POSIX only; elsewhere no lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path = folder / LOCK_FILE
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise FileExistsError(
                f"{folder} is in use by another deo bench (process {holder}); wait for it to "
                f"finish, or choose another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Let ``write`` fill a temporary file beside ``path``, then rename it onto ``path``."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def describe_file(path: str | Path | None) -> dict[str, str | None]:
    """A data file as results record it: its name and SHA-256, never a path of this machine."""
    if path is None:
        return {"data": None}
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return {"data": Path(path).name, "data_sha256": digest}

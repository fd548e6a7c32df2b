"""Local files that appear whole or not at all: written under a temporary name, then renamed."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

__all__ = ["write_atomically", "fsync_dir"]


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX keeps directory entries apart from file data)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(
    target: Path, chunks: Iterable[bytes], *, sync: bool = True, on_bytes: Callable[[int], Any] | None = None
) -> None:
    """Write ``target`` through a temporary name beside it, then rename: a reader sees all of it or none.

    The file is created with mode ``0o666`` and the kernel applies the umask,
    as for any new file. With ``sync`` the data and the rename are on disk
    when this returns. If writing fails, the temporary file is removed and
    the bytes reported to ``on_bytes`` are taken back (a negative count).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    while True:
        temporary = target.with_name(f".{target.name}.{secrets.token_hex(6)}.part")
        try:
            handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    written = 0
    try:
        with os.fdopen(handle, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
                written += len(chunk)
                if on_bytes is not None:
                    on_bytes(len(chunk))
            out.flush()
            if sync:
                os.fsync(out.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        if on_bytes is not None and written:
            on_bytes(-written)
        raise
    if sync:
        fsync_dir(target.parent)

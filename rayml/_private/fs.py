"""Small-file helpers over pyarrow filesystems, so local paths and URIs (s3://, gs://) behave the same.

Durability: a rename makes a file appear atomically, but on a local filesystem neither the file's bytes nor the
rename itself are on disk until they are fsynced; a power cut can then leave a committed name pointing at an empty
file, or lose the rename. :func:`sync_file`, :func:`sync_dir`, :func:`durable_move` and ``write_json(durable=True)``
fsync the file and its directory on a local filesystem; object stores (s3://, gs://) commit a whole object on close,
so there they do nothing.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import pyarrow.fs as pafs


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def is_local(filesystem: pafs.FileSystem) -> bool:
    """Whether ``filesystem`` is this machine's (fsync applies), not an object store."""
    return isinstance(filesystem, pafs.LocalFileSystem)


def sync_file(path: str) -> None:
    """fsync a local file's bytes to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_dir(path: str) -> None:
    """fsync a local directory, so the names created, renamed or deleted in it survive a crash."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # a platform that cannot open directories (Windows): nothing more can be done
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory (EINVAL); their renames are already durable
        pass
    finally:
        os.close(fd)


def durable_move(filesystem: pafs.FileSystem, src: str, dst: str) -> None:
    """Move ``src`` to ``dst`` (a rename on a local filesystem) with the file and both directories fsynced first and
    after, so the move, once returned, survives a crash; a plain move on object stores."""
    if not is_local(filesystem):
        filesystem.move(src, dst)
        return
    sync_file(src)
    filesystem.move(src, dst)
    sync_dir(os.path.dirname(dst))
    if os.path.dirname(src) != os.path.dirname(dst):
        sync_dir(os.path.dirname(src))


def read_json(path: str) -> dict[str, Any] | None:
    fs, p = filesystem(path)
    if fs.get_file_info(p).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(p) as f:
        return json.loads(f.read().decode())


def write_json(path: str, data: dict[str, Any], durable: bool = False) -> None:
    """Write JSON atomically where the filesystem allows (write a temp file, then move it over).

    Args:
        path: local path or URI.
        data: what to write.
        durable: fsync the file and its directory (local filesystems) before returning: the write is a commit.
    """
    fs, p = filesystem(path)
    fs.create_dir(os.path.dirname(p), recursive=True)
    tmp = f"{p}.{uuid.uuid4().hex}.tmp"
    with fs.open_output_stream(tmp) as f:
        f.write(json.dumps(data, indent=2, sort_keys=True).encode())
    if durable:
        durable_move(fs, tmp, p)
    else:
        fs.move(tmp, p)

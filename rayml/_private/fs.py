"""Small-file helpers over pyarrow filesystems, so local paths and URIs (s3://, gs://) behave the same."""

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


def read_json(path: str) -> dict[str, Any] | None:
    fs, p = filesystem(path)
    if fs.get_file_info(p).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(p) as f:
        return json.loads(f.read().decode())


def write_json(path: str, data: dict[str, Any]) -> None:
    """Write JSON atomically where the filesystem allows (write a temp file, then move it over)."""
    fs, p = filesystem(path)
    fs.create_dir(os.path.dirname(p), recursive=True)
    tmp = f"{p}.{uuid.uuid4().hex}.tmp"
    with fs.open_output_stream(tmp) as f:
        f.write(json.dumps(data, indent=2, sort_keys=True).encode())
    fs.move(tmp, p)

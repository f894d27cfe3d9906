"""Find the newest complete checkpoint of a run on storage.

Ray Train V2 registers a reported checkpoint when its controller next polls the workers (every ~2 s). A worker or a
driver that dies inside that window loses the report, although the checkpoint itself was already uploaded. The loop
therefore resumes from whichever is newer: the checkpoint Ray hands back, or the newest complete one on storage
(a torn upload fails to load and is skipped).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from typing import Any

import pyarrow.fs as pafs

from rayml._private import fs

logger = logging.getLogger("rayml.train")

META_FILE = "rayml_checkpoint.json"
STATE_FILE = "state.pt"


def _epoch_of(filesystem: pafs.FileSystem, path: str) -> int | None:
    try:
        with filesystem.open_input_stream(f"{path}/{META_FILE}") as f:
            return int(json.loads(f.read().decode())["epoch"])
    except (OSError, ValueError, KeyError):
        return None


def _loads(filesystem: pafs.FileSystem, path: str) -> bool:
    import torch  # here, not at the top: the tree loop checks its own checkpoints without torch

    try:
        with filesystem.open_input_stream(f"{path}/{STATE_FILE}") as f:
            torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
        return True
    except Exception:  # torn or partial upload
        return False


def newest_checkpoint(reported: Any, run_dir: str | None, loads: Callable[[pafs.FileSystem, str], bool] = _loads) -> Any:
    """The newer of Ray's reported checkpoint and the newest loadable one under ``run_dir`` (a ``ray.train.Checkpoint``).

    Args:
        loads: whether the checkpoint directory at a path loads (default: the torch loop's ``state.pt``).
    """
    import ray.train

    best, best_epoch = reported, -1
    if reported is not None:
        best_epoch = _epoch_of(reported.filesystem, reported.path) or -1
    if not run_dir:
        return best
    filesystem, root = fs.filesystem(run_dir)
    try:
        infos = filesystem.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    except OSError:
        return best
    candidates = []
    for info in infos:
        if info.type == pafs.FileType.Directory and info.base_name.startswith("checkpoint_"):
            epoch = _epoch_of(filesystem, info.path)
            if epoch is not None and epoch > best_epoch:
                candidates.append((epoch, info.path))
    for epoch, path in sorted(candidates, reverse=True):
        if loads(filesystem, path):
            logger.info("found a newer checkpoint on storage than Ray reported: epoch %d at %s", epoch, path)
            return ray.train.Checkpoint(path, filesystem=filesystem)
    return best

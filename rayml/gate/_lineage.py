"""Lineage: what changed between baseline and candidate, and whether the candidate can be rebuilt from its code."""

from __future__ import annotations

from typing import Any

from rayml.registry import LoadedModel

LINEAGE_TAGS = (
    "rayml.data_fingerprint",
    "rayml.git_commit",
    "rayml.ray_version",
    "rayml.torch_version",
    "rayml.onnxruntime_version",
    "rayml.rayml_version",
)
COMMIT_TAG = "rayml.git_commit"


def changes(cand: LoadedModel, base: LoadedModel | None) -> dict[str, Any]:
    """What differs between the two versions: lineage tags, feature columns, class labels ({} without a baseline)."""
    if base is None:
        return {}
    out: dict[str, Any] = {}
    for tag in LINEAGE_TAGS:
        a, b = base.info.tags.get(tag), cand.info.tags.get(tag)
        if a != b:
            out[tag.removeprefix("rayml.")] = {"baseline": a, "candidate": b}
    fa, fb = base.model_dir.input_names, cand.model_dir.input_names
    if fa != fb:
        out["features"] = {"added": sorted(set(fb) - set(fa)), "removed": sorted(set(fa) - set(fb))}
    ca, cb = base.model_dir.class_labels, cand.model_dir.class_labels
    if ca != cb:
        out["class_labels"] = {"baseline": ca, "candidate": cb}
    return out


def unreproducible(cand: LoadedModel) -> str | None:
    """Why the candidate cannot be rebuilt from a known commit (its ``rayml.git_commit`` tag is missing, ``unknown``
    or ends with ``-dirty``), or None when it can."""
    commit = cand.info.tags.get(COMMIT_TAG, "").strip()
    if commit and commit != "unknown" and not commit.endswith("-dirty"):
        return None
    if commit.endswith("-dirty"):
        what = f"was trained from uncommitted changes ({COMMIT_TAG}={commit!r})"
    else:
        what = f"records no code commit ({COMMIT_TAG} is {repr(commit) if commit else 'missing'})"
    return (
        f"lineage: {cand.info.ref} {what}, so it cannot be rebuilt from its code. Hint: commit your changes and train "
        "again from a clean checkout (a Ray job without .git: pass RAYML_GIT_COMMIT), or set "
        "gate.require_reproducible_lineage=false for an experiment"
    )

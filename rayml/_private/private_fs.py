"""Private directories and files: rayml's temp dirs and state (tokens, salts, addresses) on a shared machine.

A directory under /tmp with a predictable name can be created first by another user, who then controls what rayml
reads from it (the address of "its" Ray, the token, which processes to stop). Everything here is created owner-only
(directories 0700, files 0600) and checked when found: owned by the current user and not writable by group or
others, else :class:`~rayml.errors.UnsafePathError`. Files are written atomically (temp file + fsync + rename).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

from rayml.errors import UnsafePathError

DIR_MODE = 0o700
FILE_MODE = 0o600


def current_uid() -> int:
    """The user whose files are trusted (a function, so tests can pretend to be someone else)."""
    return os.getuid()


def _refuse(path: Path, st: os.stat_result, what: str) -> None:
    owner = st.st_uid
    if owner != current_uid():
        raise UnsafePathError(
            f"{what} {path} is owned by user id {owner}, not by you (user id {current_uid()}); rayml does not trust it",
            hint=f"if it is yours from an earlier run under another account, remove it (`rm -rf {path}`); otherwise "
            "point rayml elsewhere (RAYML_SERVE_RAY_DIR / RAYML_LOCAL_DIR / RAYML_HOME)",
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafePathError(
            f"{what} {path} is writable by others (mode {stat.S_IMODE(st.st_mode):o}); rayml does not trust it",
            hint=f"make it private (`chmod go-w {path}`), or remove it and let rayml create it again",
        )


def check_private(path: Path, what: str = "the private path") -> os.stat_result:
    """Raise :class:`UnsafePathError` unless ``path`` (and a symlink at it) belong to the current user, unwritable by others."""
    lst = os.lstat(path)
    if stat.S_ISLNK(lst.st_mode):
        _refuse(path, lst, f"{what} (a symlink)")
    st = os.stat(path)
    _refuse(path, st, what)
    return st


def ensure_private_dir(path: str | Path, what: str = "the private directory") -> Path:
    """``path`` as an existing directory of the current user with mode 0700 (created so; tightened if it is ours).

    Raises:
        UnsafePathError: it exists and belongs to another user, or group/others may write to it.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(p, DIR_MODE)  # mkdir honours the umask, which can only take permissions away
    st = check_private(p, what)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(f"{what} {p} is not a directory", hint=f"remove it (`rm {p}`) and run the command again")
    if stat.S_IMODE(st.st_mode) != DIR_MODE:
        os.chmod(p, DIR_MODE)  # ours, from an older rayml or a generous umask: only its owner needs it
    return p


def existing_private_dir(path: str | Path, what: str = "the private directory") -> Path | None:
    """``path`` if it exists and passes :func:`check_private`; None if it does not exist."""
    p = Path(path)
    if not os.path.lexists(p):
        return None
    check_private(p, what)
    return p


def read_private_file(path: str | Path, what: str = "the file") -> str | None:
    """The text of ``path``, or None if it does not exist; the file must be the current user's, unwritable by others.

    Raises:
        UnsafePathError: another user owns it, or group/others may write to it (checked on the opened file).
    """
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as e:  # O_NOFOLLOW on a symlink: ELOOP
        raise UnsafePathError(f"{what} {p} cannot be opened safely ({e})", hint=f"remove it (`rm {p}`)") from e
    with os.fdopen(fd, "r", encoding="utf-8") as f:
        _refuse(p, os.fstat(f.fileno()), what)
        return f.read()


def write_private_file(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically with mode 0600 (a temp file in the same directory, fsync, rename)."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")  # mkstemp: 0600, O_EXCL
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return p


def create_private_file_once(path: str | Path, text: str, what: str = "the file") -> str:
    """Create ``path`` (0600) holding ``text`` unless it exists; returns what it holds.

    Safe when two processes race: the file appears complete or not at all (written aside, then hard-linked into
    place, which fails if the name is taken), so both get the same text.

    Raises:
        UnsafePathError: it exists and is not a private file of the current user.
    """
    p = Path(path)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, p)
            return text
        except FileExistsError:
            found = read_private_file(p, what)
            return text if found is None else found
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def private_state_dir() -> Path:
    """``$RAYML_HOME/private`` (0700): rayml's own secrets and state that no other user may read or plant."""
    from rayml._private.constants import rayml_home

    return ensure_private_dir(rayml_home() / "private", "rayml's private state directory")

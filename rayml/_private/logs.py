"""One log file per command, so that a terminal shows rayml's own lines and the engines' logs stay readable later.

Ray, Tune, Train, Serve, MLflow and Ray's worker processes write to this process's standard streams in many ways:
Python ``print`` (Tune's tables), logging handlers bound to ``sys.stderr`` (``ray``, ``ray.serve``, ``mlflow``), the
driver's forwarder of worker logs (``ray.init(log_to_driver=True)`` prints to ``sys.stdout``/``sys.stderr``),
``warnings``, and C++ logs written straight to file descriptor 2 (``core_worker.cc`` ``E`` lines). Silencing them one
by one breaks with every Ray release; :class:`LogCapture` points all of them at one file instead, and hands the real
terminal streams to the caller for its own output.

The file keeps everything a ``--verbose`` run would have shown, worker logs included, so nothing is lost.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import time
from pathlib import Path
from typing import TextIO

from rayml._private import constants

LOG_DIR = "logs"
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

logger = logging.getLogger("rayml")


def log_path(command: str, home: Path | None = None) -> Path:
    """``$RAYML_HOME/logs/rayml-<command>-<YYYYmmdd-HHMMSS>.log``, not yet created; a suffix keeps apart two commands
    started in the same second."""
    folder = (home or constants.rayml_home()) / LOG_DIR
    stem = f"rayml-{command.replace(' ', '-')}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = folder / f"{stem}.log", 1
    while path.exists():
        n += 1
        path = folder / f"{stem}-{n}.log"
    return path


class _LevelPrefix(logging.Formatter):
    """``warning: message``: how a command-line tool shows a warning (no timestamp, no logger name)."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {super().format(record)}"


class _Repeats(logging.Filter):
    """Lets the first ``keep`` records of each message template through (``segment %r failed: %s`` for 30 segments
    is one problem, not 30 lines) and counts the rest for :meth:`summary`."""

    def __init__(self, keep: int = 3) -> None:
        super().__init__()
        self.keep = keep
        self.seen: dict[tuple[str, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        self.seen[key] = self.seen.get(key, 0) + 1
        return self.seen[key] <= self.keep

    def summary(self) -> list[str]:
        return [f"{n - self.keep} more like {msg[:60]!r}" for (_, msg), n in self.seen.items() if n > self.keep]


class LogCapture:
    """Send everything written to this process's stdout/stderr to a log file until :meth:`stop`.

    While it runs, ``sys.stdout`` and ``sys.stderr`` write to the file, file descriptor 2 points at it (for C++ logs
    and child processes), and the ``rayml`` logger writes INFO and above to the file and WARNING and above to the
    terminal (the first three of each kind; :meth:`stop` says how many more went to the file only). :attr:`stdout` and
    :attr:`stderr` are the terminal streams for the caller's own output.

    Lifecycle: ``start()`` once, ``stop()`` once (idempotent); stop restores the streams, file descriptor 2 and the
    ``rayml`` logger as they were. The file stays open after ``stop`` for threads that still hold a handler bound to it
    (it is one file descriptor, closed at exit).

    Example:
        >>> capture = LogCapture(log_path("train"))
        >>> capture.start()
        >>> sys.stdout.write("engine noise\\n")  # goes to the file (Tune's tables, Ray's worker logs)
        >>> capture.stdout.write("result\\n")        # goes to the terminal
        >>> capture.stop()
    """

    def __init__(self, path: Path, terminal_level: int = logging.WARNING) -> None:
        self.path = path
        self.terminal_level = terminal_level
        self.stdout: TextIO = sys.stdout
        self.stderr: TextIO = sys.stderr
        self._file: TextIO | None = None
        self._saved_fd2: int | None = None
        self._saved_streams: tuple[TextIO, TextIO] | None = None
        self._saved_rayml: tuple[list[logging.Handler], int, bool] | None = None
        self._release_warnings = False
        self._repeats = _Repeats()

    @property
    def active(self) -> bool:
        return self._saved_streams is not None

    def start(self) -> None:
        if self.active:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # append mode: the file descriptor 2 copy, sys.stdout and the logging handler write through it concurrently
        log = open(self.path, "a", buffering=1, encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
        self._file = log
        out, err = sys.stdout, sys.stderr
        self._saved_streams = (out, err)
        for stream in (out, err):
            with contextlib.suppress(Exception):
                stream.flush()
        self.stdout, self.stderr = out, err
        if _fileno(err) == 2:
            # C++ logs and child processes write to the descriptor, not to sys.stderr: move the descriptor itself,
            # and keep a copy of the terminal's for our own output
            self._saved_fd2 = os.dup(2)
            self.stderr = open(  # noqa: SIM115 - closed in stop()
                os.dup(self._saved_fd2), "w", buffering=1, encoding=getattr(err, "encoding", None) or "utf-8",
                errors="backslashreplace",
            )
            os.dup2(log.fileno(), 2)
        # sys.stderr keeps writing to descriptor 2 (now the file) when it is the real one; else it is replaced
        sys.stdout = log
        if self._saved_fd2 is None:
            sys.stderr = log
        self._route_rayml(log)
        # logging keeps whether warnings are captured only in a private global: read it to restore the same state
        self._release_warnings = getattr(logging, "_warnings_showwarning", None) is None  # not captured before us
        logging.captureWarnings(True)
        root = logging.getLogger()
        if not any(getattr(h, "_rayml_capture", False) for h in root.handlers):
            handler = logging.StreamHandler(log)
            handler.setFormatter(logging.Formatter(FILE_FORMAT))
            handler._rayml_capture = True  # type: ignore[attr-defined]
            root.addHandler(handler)
        logger.info("rayml %s (pid %d); this file holds the logs of Ray, MLflow and the workers", _argv(), os.getpid())

    def _route_rayml(self, log: TextIO) -> None:
        rayml = logging.getLogger("rayml")
        self._saved_rayml = (list(rayml.handlers), rayml.level, rayml.propagate)
        to_file = logging.StreamHandler(log)
        to_file.setFormatter(logging.Formatter(FILE_FORMAT))
        to_terminal = logging.StreamHandler(self.stderr)
        to_terminal.setLevel(self.terminal_level)
        to_terminal.addFilter(self._repeats)
        to_terminal.setFormatter(_LevelPrefix("%(message)s"))
        rayml.handlers[:] = [to_file, to_terminal]
        rayml.setLevel(logging.INFO)
        rayml.propagate = False  # the root handler writes the same file: once is enough

    def stop(self) -> None:
        if self._saved_streams is None:
            return
        for stream in (sys.stdout, sys.stderr, self._file):
            with contextlib.suppress(Exception):
                if stream is not None:
                    stream.flush()
        out, err = self._saved_streams
        sys.stdout, sys.stderr = out, err
        if self._saved_fd2 is not None:
            os.dup2(self._saved_fd2, 2)
            os.close(self._saved_fd2)
            self._saved_fd2 = None
            with contextlib.suppress(Exception):
                self.stderr.close()
        self.stdout, self.stderr = out, err
        for line in self._repeats.summary():
            self.stderr.write(f"warning: … and {line}; all in {self.path}\n")
        if self._saved_rayml is not None:
            rayml = logging.getLogger("rayml")
            rayml.handlers[:], level, rayml.propagate = self._saved_rayml
            rayml.setLevel(level)
            self._saved_rayml = None
        if self._release_warnings:
            logging.captureWarnings(False)
        root = logging.getLogger()
        root.handlers[:] = [h for h in root.handlers if not getattr(h, "_rayml_capture", False)]
        self._saved_streams = None


def _fileno(stream: TextIO) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None  # an in-memory stream (pytest's capsys, click's CliRunner)


def redact_override(setting: str) -> str:
    """A ``--set key=value`` override as it may be shown: the value hidden when the key names a secret (an API key)."""
    key, sep, _ = setting.partition("=")
    if sep and any(s in key.lower() for s in ("key", "token", "secret", "password")):
        return f"{key}=**********"
    return setting


def _argv() -> str:
    """The command line, with the value of any ``--set`` that names a secret (``serve.api_keys=...``) left out."""
    args, out = sys.argv[1:], []
    for i, arg in enumerate(args):
        if arg.startswith("--set="):
            arg = "--set=" + redact_override(arg[len("--set=") :])
        elif i and args[i - 1] == "--set":
            arg = redact_override(arg)
        out.append(arg)
    return " ".join(out)

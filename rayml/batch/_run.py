"""`rayml batch`: score files with a registered model or model set on Ray Data, exactly once per input file.

The driver resolves and pins the model version, lists the input files, skips those the ledger says are committed,
and runs a Ray Data ``map_batches`` over the rest with a pool of :class:`FileScorer` actors (one file per call;
biggest files first). Each actor loads the model set once, keeps per-segment ONNX sessions in an LRU cache, and
reads, scores, stages and commits its files itself, so no rows pass through the driver. The driver only streams
back one small result row per file, for the progress bar and the summary.

With ``batch.capture_destination`` set, each actor also captures its committed files' predictions for the quality
join (:mod:`rayml.batch._capture`); the driver then captures the files committed by earlier invocations that have
no capture yet (after a capture failure, or when capture was turned on later).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rayml._private import constants, fs
from rayml.batch._capture import BatchCapture, capture_committed
from rayml.batch._ledger import InputFile, OutputDir, list_inputs, new_attempt_id
from rayml.batch._score import SENSITIVE_ID_HINT, FileScorer, ScoreSpec, sensitive_id_problems
from rayml.config import BatchConfig, BatchJobConfig, ConfigLike, Overrides, dump_config, resolve_config
from rayml.data import resolve_files
from rayml.errors import ConfigError, RaymlError
from rayml.monitor import DriftCounter, drift_report
from rayml.registry import LoadedModel, ModelVersionInfo, Registry, parse_ref

logger = logging.getLogger("rayml.batch")

MANIFEST_VERSION = 1


@dataclass
class FileResult:
    """What happened to one input file. ``status``: committed | skipped (committed earlier) | failed.

    ``captured``: rows of its predictions captured (``batch.capture_destination``), -1 when none were (no capture
    configured, a skipped or failed file, or the capture failed: then ``capture_error`` says why).
    """

    path: str
    status: str
    rows: int = 0
    output: str = ""
    error: str = ""
    hint: str = ""
    seconds: float = 0.0
    captured: int = -1
    capture_error: str = ""


@dataclass
class BatchSummary:
    """The end of a batch run. ``ok`` is False when any input file failed."""

    model_name: str
    model_version: int
    batch_run_id: str
    attempt: str
    output: str
    files: int
    committed: int
    skipped: int
    failed: dict[str, str] = field(default_factory=dict)  # input path -> error
    rows: int = 0  # rows scored and committed by this invocation
    rows_skipped: int = 0  # rows of files committed by earlier invocations
    wall_s: float = 0.0
    actors: int = 0
    drift: dict | None = None  # {"status", "drifted_features", "rows", "files", "path"}; None when not counted
    capture: str | None = None  # batch.capture_destination (None: predictions not captured)
    captured: int = 0  # files whose predictions this invocation captured (earlier-committed files included)
    captured_rows: int = 0
    capture_failed: dict[str, str] = field(default_factory=dict)  # input path -> error (its output is committed)

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def model_ref(self) -> str:
        return f"{self.model_name}:{self.model_version}"


def _resolve_cfg(config: ConfigLike, overrides: Overrides, **fields: object) -> BatchJobConfig:
    cfg = resolve_config(BatchJobConfig, config, overrides)
    shortcuts = {f"batch.{key}": value for key, value in fields.items() if value is not None}
    cfg = resolve_config(BatchJobConfig, cfg, shortcuts)  # validated like any override
    missing = [f"batch.{k}" for k in ("model", "input", "output") if getattr(cfg.batch, k) in (None, "")]
    if missing:
        raise ConfigError(
            f"{', '.join(missing)} not set",
            hint="pass --model NAME@ALIAS|NAME:VERSION --input PATH --output PATH (or set them in the batch: section)",
        )
    return cfg


def _required(value: str | None) -> str:
    """batch.model, batch.input or batch.output: ``_resolve_cfg`` has checked that each is set."""
    assert value is not None, "batch.model, batch.input and batch.output are checked by _resolve_cfg"
    return value


def _check_manifest(out: OutputDir, b: BatchConfig, name: str, version: int, pinned_explicitly: bool) -> dict | None:
    """The existing run's manifest, after checking that this invocation continues the same run."""
    manifest = out.read_manifest()
    if manifest is None:
        return None
    problems = []
    if manifest["model_name"] != name:
        problems.append(f"it was started with model {manifest['model_name']!r}, not {name!r}")
    elif manifest["model_version"] != version and pinned_explicitly:
        problems.append(f"it was started with {name}:{manifest['model_version']}, not {name}:{version}")
    for key in ("prediction_column", "id_columns"):
        current = list(getattr(b, key)) if key == "id_columns" and b.id_columns is not None else getattr(b, key)
        if manifest.get(key) != current:
            problems.append(f"its batch.{key} was {manifest.get(key)!r}, now {current!r}")
    if problems:
        raise ConfigError(
            f"output {out.uri} holds an unfinished or finished run that this command cannot continue: {'; '.join(problems)}",
            hint="rerun with the original settings to finish it, pass --overwrite to start over, or use another --output",
        )
    if manifest["model_version"] != version:
        logger.warning(
            "%s now resolves to version %s, but this output was started with version %s: finishing with version %s "
            "(use --overwrite to rescore everything with the new version)",
            b.model,
            version,
            manifest["model_version"],
            manifest["model_version"],
        )
    return manifest


def run_batch(
    config: ConfigLike = None,
    *,
    overrides: Overrides = None,
    model: str | None = None,
    input: str | None = None,
    output: str | None = None,
    overwrite: bool | None = None,
    registry: Registry | None = None,
    progress: Callable[[FileResult, int, int], None] | None = None,
) -> BatchSummary:
    """Score every input file with a model or model set; restartable, exactly once per input file.

    ``model``, ``input``, ``output`` and ``overwrite`` are shortcuts for the ``batch.*`` overrides. Running the same
    command again after a crash skips the committed files and finishes the rest; ``overwrite=True`` starts over.

    Args:
        config: the job config: a BatchJobConfig object, a YAML path or a dict shaped like the YAML (None: defaults).
        overrides: applied on top, as ``{"batch.drift": False}`` or ``["batch.drift=false"]`` (the CLI's ``--set``).
        model: ``NAME@ALIAS`` or ``NAME:VERSION``.
        input: parquet/CSV file, directory, glob or URI.
        output: output directory or URI.
        overwrite: delete this tool's earlier outputs and ledger first.
        registry: the registry to use (default: ``cfg.registry.tracking_uri``).
        progress: called as ``progress(result, files_done, files_total)`` once per input file (committed, skipped
            or failed) as results arrive.

    Returns:
        The :class:`BatchSummary`; ``ok`` is False when any file failed (the others are committed). A failed
        capture (``capture_failed``) does not make it False: the outputs are committed, and the same command run
        again captures them.

    Raises:
        ConfigError, DataError, ModelNotFoundError: nothing to score, or a bad model ref or input path.

    Example:
        >>> s = run_batch(model="sales-stores@production", input="data/sales", output="out/scores")
        >>> s.committed, s.rows, s.rows_per_s
    """
    t0 = time.perf_counter()
    cfg = _resolve_cfg(config, overrides, model=model, input=input, output=output, overwrite=overwrite)
    b = cfg.batch
    logger.info("resolved config:\n%s", dump_config(cfg))
    registry = registry or Registry(cfg.registry.tracking_uri)
    info = registry.resolve(_required(b.model))  # before listing inputs: a bad ref fails first
    in_fs, fmt, out, inputs = _list_run_inputs(b)
    # one run per output folder: the lease is taken before --overwrite deletes anything and held until the end
    with out.lease() as lease:
        summary = _run_leased(cfg, registry, info, in_fs, fmt, out, inputs, lease.owner, progress)
        lease.check()
    summary.wall_s = time.perf_counter() - t0
    logger.info(
        "%d committed, %d skipped, %d failed; %d rows in %.1fs (%.0f rows/s)",
        summary.committed,
        summary.skipped,
        len(summary.failed),
        summary.rows,
        summary.wall_s,
        summary.rows_per_s,
    )
    return summary


def _run_leased(
    cfg: BatchJobConfig,
    registry: Registry,
    info: ModelVersionInfo,
    in_fs: Any,
    fmt: str,
    out: OutputDir,
    inputs: list[InputFile],
    owner: str,
    progress: Callable[[FileResult, int, int], None] | None,
) -> BatchSummary:
    """The part of a run that writes the output folder (its lease held by ``owner``)."""
    b = cfg.batch
    if b.overwrite:
        deleted = out.reset(inputs)
        logger.info("--overwrite: deleted %d earlier output file(s) and the ledger of %s", deleted, out.uri)
    loaded, manifest = _pin_model(registry, info, out, b)
    out.discard_staging()  # staged files of an interrupted attempt can never commit (no live run: we hold the lease)
    todo, done = out.pending(inputs)
    summary, report = _start(loaded.info, manifest, out, inputs, done, progress)
    logger.info(
        "%s: %d input file(s), %d already committed, %d to score with %s (%s)",
        out.uri,
        len(inputs),
        len(done),
        len(todo),
        loaded.info.ref,
        loaded.kind,
    )
    capture = (
        BatchCapture.of(b.capture_destination, loaded.model_dir, loaded.info.name, loaded.info.version, b.prediction_column)
        if b.capture_destination
        else None
    )
    summary.capture = capture.destination if capture else None
    if todo:
        spec = _score_spec(loaded, manifest, registry, out, in_fs, fmt, summary.attempt, b, owner, capture)
        _score_pending(todo, spec, b, summary, out, report)
    if capture is not None and done:
        files, rows, failed = capture_committed(capture, out, done, out.ledger())
        summary.captured += files
        summary.captured_rows += rows
        summary.capture_failed.update(failed)
    if summary.capture_failed:
        logger.warning(
            "the predictions of %d committed file(s) could not be captured to %s: run the same command again to capture them",
            len(summary.capture_failed),
            summary.capture,
        )
    if b.drift:
        summary.drift = _write_drift_summary(out, inputs, loaded.model_dir.reference_stats(), cfg, summary)
    return summary


# --- the steps of a run ------------------------------------------------------------------------------------------------
def _list_run_inputs(b: BatchConfig) -> tuple[Any, str, OutputDir, list[InputFile]]:
    """(input filesystem, format, output dir, input files), after checking that the output is not read as input."""
    in_fs, files, fmt = resolve_files(_required(b.input), b.format)
    out = OutputDir(_required(b.output))
    inputs = list_inputs(in_fs, files)
    inside = [f.path for f in inputs if f.path.startswith(out.root.rstrip("/") + "/")]
    if inside:
        raise ConfigError(
            f"the output directory {out.uri} is inside the input {b.input} ({len(inside)} input file(s) under it)",
            hint="write the output somewhere that is not read as input, e.g. a sibling directory",
        )
    return in_fs, fmt, out, inputs


def _pin_model(registry: Registry, info: ModelVersionInfo, out: OutputDir, b: BatchConfig) -> tuple[LoadedModel, dict]:
    """Load the version this run scores with, and the run's manifest (written now when the run is new).

    A run continued after a crash keeps the version it started with, even when the alias has moved since.
    """
    _, _, explicit_version = parse_ref(_required(b.model))
    manifest = _check_manifest(out, b, info.name, info.version, explicit_version is not None)
    if manifest is not None and manifest["model_version"] != info.version:
        info = registry.get_version(info.name, int(manifest["model_version"]))
    loaded = registry.load(info.ref)
    if loaded.model_dir.is_model_set:
        loaded.model_dir.model_set()  # fail here, once, rather than in every actor
    sensitive = sensitive_id_problems(b.id_columns or (), loaded.model_dir.withheld_from("batch_output"))
    if sensitive:  # here, once, before anything is scored: every file would fail alike
        raise ConfigError(f"batch.id_columns of {info.ref}: {'; '.join(sensitive)}", hint=SENSITIVE_ID_HINT)
    if manifest is None:
        manifest = {
            "format_version": MANIFEST_VERSION,
            "batch_run_id": uuid.uuid4().hex,
            "model_name": info.name,
            "model_version": info.version,
            "model_ref": b.model,
            "kind": loaded.kind,
            "run_id": info.run_id,
            "input": b.input,
            "prediction_column": b.prediction_column,
            "id_columns": list(b.id_columns) if b.id_columns is not None else None,
            "created_at": time.time(),
        }
        out.fs.create_dir(out.root, recursive=True)
        out.write_manifest(manifest)
    return loaded, manifest


@dataclass
class _Progress:
    """The caller's ``progress`` callback, counting the files done."""

    callback: Callable[[FileResult, int, int], None] | None
    total: int
    done: int = 0

    def __call__(self, result: FileResult) -> None:
        self.done += 1
        if self.callback is not None:
            self.callback(result, self.done, self.total)


def _start(
    info: ModelVersionInfo,
    manifest: dict,
    out: OutputDir,
    inputs: list[InputFile],
    done: list[InputFile],
    progress: Callable[[FileResult, int, int], None] | None,
) -> tuple[BatchSummary, _Progress]:
    """The summary of this invocation, with the files committed earlier already reported as skipped."""
    ledger = out.ledger() if done else {}
    summary = BatchSummary(
        model_name=info.name,
        model_version=info.version,
        batch_run_id=manifest["batch_run_id"],
        attempt=new_attempt_id(),
        output=out.uri,
        files=len(inputs),
        committed=0,
        skipped=len(done),
        rows_skipped=sum(ledger[f.path].rows for f in done),
    )
    report = _Progress(progress, len(inputs))
    for f in done:
        report(FileResult(f.path, "skipped", rows=ledger[f.path].rows, output=ledger[f.path].output))
    return summary, report


def _score_spec(
    loaded: LoadedModel,
    manifest: dict,
    registry: Registry,
    out: OutputDir,
    in_fs: Any,
    fmt: str,
    attempt: str,
    b: BatchConfig,
    lease_owner: str | None = None,
    capture: BatchCapture | None = None,
) -> ScoreSpec:
    return ScoreSpec(
        model_name=loaded.info.name,
        model_version=loaded.info.version,
        model_path=str(loaded.path),
        tracking_uri=registry.tracking_uri,
        kind=loaded.kind,
        output_uri=out.uri,
        input_fs=in_fs,
        fmt=fmt,
        attempt=attempt,
        batch_run_id=manifest["batch_run_id"],
        batch_size=b.batch_size,
        id_columns=tuple(b.id_columns) if b.id_columns is not None else None,
        prediction_column=b.prediction_column,
        max_cached_models=b.max_cached_models,
        drift=b.drift,
        faults=constants.fault_injection(),
        lease_owner=lease_owner,
        capture=capture,
    )


def _score_pending(
    todo: list[InputFile], spec: ScoreSpec, b: BatchConfig, summary: BatchSummary, out: OutputDir, report: _Progress
) -> None:
    """Score the files not committed yet on Ray, adding each result to ``summary`` as it arrives."""
    try:
        for r in _score_on_ray(todo, spec, b, summary):
            if r.status == "committed":
                summary.committed += 1
                summary.rows += r.rows
                if r.capture_error:
                    summary.capture_failed[r.path] = r.capture_error
                elif r.captured >= 0:
                    summary.captured += 1
                    summary.captured_rows += r.captured
            else:
                summary.failed[r.path] = r.error
            report(r)
    finally:
        out.discard_staging(spec.attempt)


def _write_drift_summary(
    out: OutputDir, inputs: list[InputFile], reference: dict, cfg: BatchJobConfig, summary: BatchSummary
) -> dict | None:
    """Merge the drift counts of every committed file (this and earlier invocations) into the run's drift summary.

    The same report as ``rayml monitor drift`` (without label drift), against the version's global reference, written
    to ``<output>/_rayml_batch/drift.json``. Counts are per committed file, so a rerun after a crash counts every row
    exactly once, like the output.
    """
    if not reference.get("features"):
        logger.warning("%s has no reference statistics: no drift summary", summary.model_ref)
        return None
    committed = out.ledger()
    counts = out.drift_counts([f for f in inputs if f.path in committed])
    counter = DriftCounter(reference)
    for c in counts.values():
        counter = counter.merge(DriftCounter.from_dict(reference, c))
    report = drift_report(counter, cfg.drift)
    fs.write_json(
        out.drift_summary_path,
        {
            "model": summary.model_ref,
            "batch_run_id": summary.batch_run_id,
            "files": len(counts),
            "thresholds": cfg.drift.model_dump(mode="json"),
            "report": report,
            "counts": counter.to_dict(),
            "written_at": time.time(),
        },
    )
    if report["status"] != "ok":
        logger.warning("drift %s in %s: %s", report["status"], out.uri, ", ".join(report["drifted_features"]) or "-")
    return {
        "status": report["status"],
        "drifted_features": report["drifted_features"],
        "rows": report["rows"],
        "files": len(counts),
        "path": out.drift_summary_path,
    }


def _score_on_ray(todo: list[InputFile], spec: ScoreSpec, b: BatchConfig, summary: BatchSummary):
    import ray
    import ray.data

    from rayml._private.ray_session import ensure_ray

    ensure_ray()
    slots = int(float(ray.cluster_resources().get("CPU", 1.0)) / b.cpus_per_actor) or 1
    actors = max(1, min(b.concurrency or slots, len(todo)))
    summary.actors = actors
    # biggest files first: the last file to start is a small one, so actors finish at about the same time
    ordered = sorted(todo, key=lambda f: (-f.size, f.path))
    items = [{"path": f.path, "size": f.size, "mtime_ns": f.mtime_ns} for f in ordered]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    scored = ds.map_batches(
        FileScorer,
        fn_constructor_kwargs={"spec": spec},
        batch_size=1,
        batch_format="pandas",
        # Ray Data's default queue of a few files per actor: with max_tasks_in_flight_per_actor=1 it measurably ran
        # one file at a time across the whole pool (the actors took turns)
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=b.cpus_per_actor,
    )
    try:
        for row in scored.iter_rows():
            yield FileResult(
                path=row["path"],
                status=row["status"],
                rows=int(row["rows"]),
                output=row["output"] or "",
                error=row["error"] or "",
                hint=row["hint"] or "",
                seconds=float(row["seconds"]),
                captured=int(row["captured"]),
                capture_error=row["capture_error"] or "",
            )
    except RaymlError:
        raise
    except Exception as e:  # an actor could not start (model unreadable) or Ray failed under us
        raise RaymlError(
            f"batch scoring failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
            hint="committed files are kept: run the same command again to finish the rest",
        ) from e

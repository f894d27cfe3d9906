"""`rayml models list | show | alias | register`."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Any, cast

import typer

from rayml.cli._common import ConfigOpt, SetOpt, VerboseOpt, console, load, table
from rayml.cli._output import start_output
from rayml.config import RegistryJobConfig
from rayml.config.data import SENSITIVE_USES, SensitiveUse
from rayml.errors import UserError

app = typer.Typer(help="Registered models: versions, aliases, lineage.", no_args_is_help=True)


def _registry(config, set_):
    from rayml.registry import Registry

    return Registry(load(RegistryJobConfig, config, set_).registry.tracking_uri)


@app.command("list")
def list_models(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """List registered models with their latest version and aliases."""
    models = _registry(config, set_).list_models()
    if not models:
        console.print("No models registered yet. Next: rayml train --config jobs/configs/train.yaml")
        return
    rows = [
        [m["name"], m["kind"], m["versions"], m["latest_version"], ", ".join(f"{a}=v{v}" for a, v in m["aliases"].items())]
        for m in models
    ]
    console.print(table("Registered models", ["name", "kind", "versions", "latest", "aliases"], rows))
    console.print(f"Next: rayml models show {models[0]['name']}")


@app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="Model name, or NAME:VERSION / NAME@ALIAS for one version's details.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Show a model's versions (metrics, aliases, lineage), or every detail of one version."""
    from rayml.registry import parse_ref

    reg = _registry(config, set_)
    base, alias, version = parse_ref(name)
    if alias is None and version is None:
        versions = reg.versions(base)
        rows = []
        for v in versions:
            m = reg.run_metrics(v.run_id)
            metric = next((f"{k}={m[k]:.4g}" for k in ("best_val_rmse", "best_val_auc", "best_val_loss") if k in m), "")
            created = dt.datetime.fromtimestamp(v.created_ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
            rows.append(
                [
                    v.version,
                    ", ".join(v.aliases),
                    created,
                    metric,
                    perf_summary(v.tags, compact=True),
                    v.tags.get("rayml.data_fingerprint", ""),
                    v.tags.get("rayml.git_commit", "")[:12],
                ]
            )
        columns = ["version", "aliases", "created (UTC)", "metric", "p50 rows/s train peak", "data fingerprint", "commit"]
        console.print(table(f"{base}", columns, rows))
        console.print(f"Details of one version: rayml models show {base}:{versions[-1].version}")
        return
    info = reg.resolve(name)
    console.print(
        f"[bold]{info.name}[/] version {info.version}" + (f"  aliases: {', '.join(info.aliases)}" if info.aliases else "")
    )
    console.print(f"  source: {info.source}")
    console.print(f"  run: {info.run_id}")
    if info.description:
        console.print(f"  description: {info.description}")
    perf = perf_summary(info.tags)
    if perf:
        console.print(f"  performance: {perf}")
    for k, v in sorted(info.tags.items()):
        console.print(f"  {k}: {v}")
    metrics = reg.run_metrics(info.run_id)
    for k in sorted(m for m in metrics if m.startswith("best_")):
        console.print(f"  {k}: {metrics[k]:.6g}")
    if "production" not in info.aliases:
        console.print(f"Next: rayml models alias {info.name} {info.version} production")
    else:
        console.print(f"Next: rayml batch --model {info.name}@production --input DATA --output OUT")


@app.command("alias")
def alias(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int, typer.Argument(help="Version number the alias should point at.")],
    alias_: Annotated[str, typer.Argument(metavar="ALIAS", help="Alias, e.g. production, canary.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Point ALIAS at VERSION. Moving `production` keeps the old production version as `previous`."""
    changed = _registry(config, set_).set_alias(name, version, alias_)
    for a, v in changed.items():
        console.print(f"{name}@{a} -> version {v}")
    console.print(f"Next: rayml models show {name}@{alias_}")


def perf_summary(tags: dict[str, str], compact: bool = False) -> str:
    """A version's performance tags (``rayml.perf.*``) for people: serving p50 latency and throughput from the
    registration probe, training time and peak worker memory; "" when it has none (registered before they existed).

    Args:
        compact: for a table cell, ``0.042ms 235k/s 12.3s 512MiB`` ("-" for a missing figure).
    """
    from rayml.models import PERF_TAGS

    def number(key: str) -> float | None:
        try:
            return float(tags[PERF_TAGS[key]])
        except (KeyError, ValueError):
            return None

    latency, rows, seconds, peak = (number(k) for k in ("latency_ms", "throughput_rows_s", "train_time_s", "peak_memory_bytes"))
    if (latency, rows, seconds, peak) == (None, None, None, None):
        return ""
    if compact:
        cells = [
            f"{latency:.3g}ms" if latency is not None and latency < 1000 else f"{latency:.0f}ms" if latency is not None else None,
            f"{_short(rows)}/s" if rows is not None else None,
            f"{seconds:.1f}s" if seconds is not None else None,
            f"{peak / 2**20:.0f}MiB" if peak is not None else None,
        ]
        return " ".join(v or "-" for v in cells)
    shown = [
        (f"{latency:.3g} ms" if latency < 1000 else f"{latency:,.0f} ms") if latency is not None else None,
        f"{rows:,.0f}" if rows is not None else None,
        f"{seconds:,.1f} s" if seconds is not None else None,
        f"{peak / 2**20:,.0f} MiB" if peak is not None else None,
    ]
    labels = ("serving p50 latency", "throughput (rows/s)", "training time", "peak worker memory")
    return ", ".join(f"{label} {v}" for label, v in zip(labels, shown, strict=True) if v)


def _short(n: float) -> str:
    """``950``, ``235k``, ``1.2M``: a count for a narrow table cell."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= size:
            return f"{n / size:.3g}{suffix}"
    return f"{n:.0f}"


# --- bring your own model -------------------------------------------------------------------------------------------
_FILE = {"exists": False, "dir_okay": False, "show_default": False}


@app.command("register")
def register(
    name: Annotated[str, typer.Option("--name", "-n", help="Registered model name.", show_default=False)],
    sample: Annotated[
        str,
        typer.Option(
            "--sample", help="Parquet/CSV file, directory, glob or URI: raw rows with the target, for parity.", show_default=False
        ),
    ],
    target: Annotated[str, typer.Option("--target", "-t", help="The target column of the sample.", show_default=False)],
    onnx: Annotated[Path | None, typer.Option("--onnx", help="An ONNX model file.", **_FILE)] = None,
    mlflow_uri: Annotated[
        str | None,
        typer.Option(
            "--mlflow-uri",
            help="An MLflow model with an onnx flavor: models:/NAME/VERSION, runs:/ID/PATH, a directory.",
            show_default=False,
        ),
    ] = None,
    xgboost: Annotated[
        Path | None, typer.Option("--xgboost", help="An XGBoost model file (.json or .ubj from save_model).", **_FILE)
    ] = None,
    lightgbm: Annotated[Path | None, typer.Option("--lightgbm", help="A LightGBM text model file (save_model).", **_FILE)] = None,
    skops: Annotated[Path | None, typer.Option("--skops", help="A scikit-learn model saved with skops.io.dump.", **_FILE)] = None,
    task: Annotated[str, typer.Option("--task", help="auto (the model's own), regression, binary or multiclass.")] = "auto",
    features: Annotated[
        str | None,
        typer.Option("--features", help="Comma-separated columns of a one-matrix model's input, in order.", show_default=False),
    ] = None,
    class_labels: Annotated[
        str | None,
        typer.Option(
            "--class-labels",
            help="Comma-separated classes in output order: of a model that does not record them, or names for a "
            "booster's encoded classes 0..K-1.",
            show_default=False,
        ),
    ] = None,
    reference: Annotated[
        str | None,
        typer.Option("--reference", help="Rows for the drift reference statistics (default: the sample).", show_default=False),
    ] = None,
    alias: Annotated[
        str | None,
        typer.Option("--alias", help="Alias to point at the new version (default: registry.alias).", show_default=False),
    ] = None,
    forbidden_features: Annotated[
        str | None,
        typer.Option(
            "--forbidden-features",
            help="Comma-separated names or patterns (e.g. '*email*,ssn') the model may not take as features "
            "(as data.forbidden_features): the import is refused before anything is registered.",
            show_default=False,
        ),
    ] = None,
    sensitive_columns: Annotated[
        str | None,
        typer.Option(
            "--sensitive-columns",
            help="Comma-separated names or patterns whose raw values never reach reference statistics, batch "
            "outputs or captures (as data.sensitive_columns).",
            show_default=False,
        ),
    ] = None,
    allow_sensitive_in: Annotated[
        str | None,
        typer.Option(
            "--allow-sensitive-in",
            help="Comma-separated uses that may see the sensitive columns' values after all: reference_stats, "
            "batch_output, capture (as data.allow_sensitive_in).",
            show_default=False,
        ),
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Convert a model made elsewhere to ONNX, check it on sample rows and register it as a new version.

    Files are read in safe formats only (ONNX, XGBoost JSON/UBJSON, LightGBM text, skops with its trusted-types
    check), never a pickle. For a scikit-learn, XGBoost, LightGBM or torch object in Python, use
    rayml.register_model(model, name=..., sample=df, target=...).
    """
    import rayml.models.importers as importers
    from rayml.config import DataConfig
    from rayml.data import load_table
    from rayml.registry import Registry, register_model

    given = {"--onnx": onnx, "--mlflow-uri": mlflow_uri, "--xgboost": xgboost, "--lightgbm": lightgbm, "--skops": skops}
    chosen = [k for k, v in given.items() if v is not None]
    if len(chosen) != 1:
        raise UserError(
            f"give exactly one model source, got {chosen or 'none'}",
            hint="one of --onnx FILE, --mlflow-uri URI, --xgboost FILE, --lightgbm FILE, --skops FILE",
        )
    if mlflow_uri is not None and not importers.is_mlflow_uri(mlflow_uri):
        raise UserError(
            f"--mlflow-uri {mlflow_uri!r} names no MLflow model",
            hint="pass models:/NAME/VERSION, models:/NAME@ALIAS, runs:/RUN_ID/PATH or a directory with an MLmodel file; "
            "for an .onnx file use --onnx",
        )
    cfg = load(RegistryJobConfig, config, set_)
    start_output("models register", verbose)
    loaders: dict[str, Any] = {
        "--onnx": importers.load_onnx,
        "--xgboost": importers.load_xgboost,
        "--lightgbm": importers.load_lightgbm,
        "--skops": importers.load_skops,
        "--mlflow-uri": str,  # resolved by the converter, with the registry's tracking URI
    }
    model = loaders[chosen[0]](given[chosen[0]])
    reg = Registry(cfg.registry.tracking_uri)
    rows = load_table(DataConfig(source=sample, target=target))
    info = register_model(
        model,
        name=name,
        sample=rows,
        target=target,
        task=task,
        reference=load_table(DataConfig(source=reference, target=target)) if reference else None,
        features=_split(features),
        class_labels=[_label(c) for c in _split(class_labels) or []] or None,
        registry=reg,
        alias=alias or cfg.registry.alias,
        forbidden_features=_split(forbidden_features) or (),
        sensitive_columns=_split(sensitive_columns) or (),
        allow_sensitive_in=_sensitive_uses(_split(allow_sensitive_in) or []),
    )
    tags = info.tags
    console.print(
        f"Registered model: {info.name} version {info.version}"
        + (f" (aliases: {', '.join(info.aliases)})" if info.aliases else "")
        + f", imported from {tags.get('rayml.source_framework')} {tags.get('rayml.source_framework_version')}"
        f" via {tags.get('rayml.converter')} {tags.get('rayml.converter_version')}"
    )
    parity = reg.run_metrics(info.run_id)
    agreement = parity.get("parity_label_agreement")
    console.print(
        f"Parity on {len(rows):,} sample rows: max abs diff {parity.get('parity_max_abs_diff', float('nan')):.2g}"
        + (f", classes agree on {agreement:.0%}" if agreement is not None else "")
        + f"; data fingerprint {tags.get('rayml.data_fingerprint')}"
    )
    console.print(
        f"Next: rayml models show {info.name}:{info.version}   |   rayml models alias {info.name} {info.version} production"
    )


def _sensitive_uses(uses: list[str]) -> list[SensitiveUse]:
    bad = [u for u in uses if u not in SENSITIVE_USES]
    if bad:
        raise UserError(
            f"--allow-sensitive-in {bad}: not a use rayml knows", hint=f"give any of {list(SENSITIVE_USES)}, comma-separated"
        )
    return [cast(SensitiveUse, u) for u in uses]


def _split(text: str | None) -> list[str] | None:
    return [p.strip() for p in text.split(",") if p.strip()] if text else None


def _label(text: str) -> int | str:
    """A class label from the command line: an integer when it reads as one, else the text."""
    try:
        return int(text)
    except ValueError:
        return text

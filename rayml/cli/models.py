"""`rayml models list | show | alias`."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer

from rayml.cli._common import ConfigOpt, SetOpt, console, load, table
from rayml.config import RegistryJobConfig

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
                    v.tags.get("rayml.data_fingerprint", ""),
                    v.tags.get("rayml.git_commit", "")[:12],
                ]
            )
        console.print(table(f"{base}", ["version", "aliases", "created (UTC)", "metric", "data fingerprint", "commit"], rows))
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

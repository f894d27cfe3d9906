"""`rayml data generate`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import BaseModel, ConfigDict, Field

from rayml.cli._common import ConfigOpt, SetOpt, VerboseOpt, console, load, setup_logging
from rayml.config import DataConfig

app = typer.Typer(help="Generate and inspect datasets.", no_args_is_help=True)


class _DataOnly(BaseModel):
    """Reads only the `data` section, so any job config (train, tune, ...) can be passed; its `data` is still strict."""

    model_config = ConfigDict(extra="ignore")
    data: DataConfig = Field(default_factory=DataConfig)


@app.command("generate")
def generate(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory (parquet files).")],
    segments: Annotated[int | None, typer.Option(help="Number of stores (segments).", show_default="8")] = None,
    rows_per_segment: Annotated[int | None, typer.Option(help="Daily rows per store.", show_default="200")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (same seed, same data).", show_default="0")] = None,
    files: Annotated[int, typer.Option(help="Number of parquet files to split the rows into (by store).")] = 1,
    drift: Annotated[
        list[str] | None,
        typer.Option(
            help="Inject drift, repeatable: shift:COLUMN=STDS, new_category:COLUMN=VALUE, missing:COLUMN=FRACTION.",
            show_default=False,
        ),
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Write a synthetic retail-sales dataset (parquet): stores x days, with a per-store target relationship.

    Options given here override the `data.synthetic` section of --config.
    """
    from rayml.data import generate_sales, parse_drift, write_dataset

    setup_logging(verbose)
    overrides = list(set_ or [])
    overrides = [o if o.startswith("data.") else f"data.synthetic.{o}" for o in overrides]
    cfg = load(_DataOnly, config, overrides).data.synthetic
    updates: dict[str, object] = {
        k: v for k, v in {"segments": segments, "rows_per_segment": rows_per_segment, "seed": seed}.items() if v is not None
    }
    if drift:
        updates["drift"] = [*cfg.drift, *parse_drift(drift)]
    cfg = cfg.model_validate({**cfg.model_dump(), **updates})
    df = generate_sales(cfg)
    paths = write_dataset(df, out, files=files)
    console.print(
        f"Wrote {len(df):,} rows ({cfg.segments} stores x {cfg.rows_per_segment} days) to {len(paths)} file(s) in {out}"
    )
    if cfg.drift:
        console.print("Drift injected: " + "; ".join(f"{d.kind} on {d.column}" for d in cfg.drift))
    console.print(f"Next: rayml train --config jobs/configs/train.yaml --set data.source={out}")

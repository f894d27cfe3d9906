"""`rayml serve up | status | down | build`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rayml._private.logs import redact_override
from rayml.cli._common import ConfigOpt, SetOpt, VerboseOpt, console, load, setup_logging, table
from rayml.cli._output import start_output
from rayml.cli._progress import Bar
from rayml.config import ServeJobConfig

app = typer.Typer(
    help="Serve registered models on Ray Serve: weighted canary, shadow, sticky A/B (Open Inference Protocol v2 + KServe v1).",
    no_args_is_help=True,
)


def _flags(config: Path | None, set_: list[str] | None) -> str:
    parts = [f"--config {config}"] if config else []
    parts += [f"--set {redact_override(s)}" for s in set_ or []]  # a key given with --set is not printed back
    return " ".join(parts)


def print_state(state, verbose: bool = False) -> None:
    """The deployments (health, replicas, constructor errors) and the routing table of an application."""
    rows = []
    for d in state.deployments:
        running = d.replicas.get("RUNNING", 0)
        other = ", ".join(f"{k.lower()} {v}" for k, v in sorted(d.replicas.items()) if k != "RUNNING")
        message = d.message if (d.status != "HEALTHY" or verbose) else ""
        rows.append([d.name, d.status, f"{running}/{d.target_replicas}" + (f" ({other})" if other else ""), message])
    console.print(table(f"Application {state.name}: {state.status}", ["deployment", "status", "replicas", "message"], rows))
    if state.message and state.status != "RUNNING":
        console.print(f"[red]{state.message}[/]")
    if state.spec is not None:
        routes = []
        for m in state.spec.models.values():
            for v in m.versions:
                role = "shadow" if m.shadow and m.shadow.version == v.version else ("primary" if v.weight > 0 else "idle")
                extra = f"{m.shadow.percent:g}% mirrored" if role == "shadow" else ""
                runs_in = "ingress" if m.placement == "ingress" else v.deployment
                routes.append([m.name, m.kind, v.version, f"{v.weight:.2%}", role, extra, m.sticky_header or "-", runs_in])
        columns = ["model", "kind", "version", "weight", "role", "shadow", "sticky header", "runs in"]
        console.print(table("Routing", columns, routes))
    console.print(f"URL: {state.url}")


def print_live_quality(cfg: ServeJobConfig) -> None:
    """Live quality per served version, from the labels posted to the app; nothing when no prediction is labelled."""
    from rayml.serve import live_quality

    rows = []
    for name, mc in sorted(cfg.serve.models.items()):
        if mc.capture is None:
            continue
        try:
            versions = live_quality(cfg, name)
        except Exception as e:  # extra information: status still shows health when it cannot be read
            console.print(f"[yellow]Live quality: not available ({type(e).__name__}: {e})[/]")
            return
        for version, q in versions.items():
            metrics = ", ".join(f"{k}={q[k]:.4g}" for k in ("mae", "rmse", "accuracy", "logloss") if k in q)
            rows.append([name, version, q["labelled"], metrics, q.get("mean_label_delay_s", "-")])
    if rows:
        title = f"Live quality (labelled predictions of the last {cfg.serve.live_quality_window_s:g}s)"
        console.print(table(title, ["model", "version", "labelled", "metrics", "mean label delay s"], rows))


def print_drift(cfg: ServeJobConfig, model: str | None = None) -> None:
    """Online drift per served version (all replicas, the window the gauges show); nothing when no rows were counted."""
    from rayml.serve import drift_status

    try:
        reports = drift_status(cfg, model)
    except Exception as e:  # drift is extra information: status still shows health when it cannot be read
        console.print(f"[yellow]Drift: not available ({type(e).__name__}: {e})[/]")
        return
    rows = []
    colour = {"alert": "red", "warn": "yellow", "ok": "green"}
    for name, versions in sorted(reports.items()):
        for version, r in sorted(versions.items()):
            status = f"[{colour.get(r['status'], 'dim')}]{r['status']}[/]"
            pred = r.get("prediction") or {}
            detail = [f"{f} ({_top_metric(r['features'][f])})" for f in r["drifted_features"]]
            rows.append(
                [
                    name,
                    version,
                    status,
                    r["rows"],
                    "complete" if r["complete"] else "current",
                    ", ".join(detail) or "-",
                    ", ".join(r["warned_features"]) or "-",
                    pred.get("status", "-"),
                ]
            )
    if rows:
        console.print(
            table(
                "Drift (online, all replicas)",
                ["model", "version", "status", "rows", "window", "alert", "warn", "predictions"],
                rows,
            )
        )


def _top_metric(feature: dict) -> str:
    name, value = max(feature["metrics"].items(), key=lambda kv: kv[1])
    return f"{name} {value:.2f}"


@app.command("up")
def up(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Also change models under an active rollout: their rollouts end (recorded)."),
    ] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Deploy (or update in place, without downtime) the Serve application described by the config.

    On a laptop, a local Ray is started for serving and keeps running after this command returns; with RAY_ADDRESS
    set, the application goes to that cluster. Updating a running application adds new versions first (no traffic),
    then moves traffic (ingress reconfigure, no restart), then drains and removes versions that are gone.
    A model with a rollout under way is not changed (exit 2) unless --force; if a rollout step or another command
    changes the application while this one deploys, this one stops and says so (rerun it).
    """
    from rayml.serve import deploy

    cfg = load(ServeJobConfig, config, set_)
    start_output("serve-up", verbose)
    with Bar(f"deploying {cfg.serve.app_name}", spinner=True):
        state = deploy(cfg, force=force)
    print_state(state)
    first = next(iter(state.spec.models)) if state.spec else "MODEL"
    console.print(
        f"Try: curl -s {state.url}/v2/models/{first}   (POST {state.url}/v2/models/{first}/infer to predict)\n"
        f"Next: rayml serve status {_flags(config, set_)}   |   rayml rollout start --model {first} --candidate VERSION "
        f"{_flags(config, set_)}"
    )


@app.command("status")
def status(config: ConfigOpt = None, set_: SetOpt = None, verbose: VerboseOpt = False) -> None:
    """Show every deployment's health and replicas (with replica constructor errors), the routing table and online drift."""
    from rayml.serve import serve_status

    cfg = load(ServeJobConfig, config, set_)
    start_output("serve-status", verbose)
    state = serve_status(cfg)
    if state is None:
        console.print(f"Application {cfg.serve.app_name!r} is not deployed. Next: rayml serve up {_flags(config, set_)}")
        raise typer.Exit(1)
    print_state(state, verbose)
    print_drift(cfg)
    print_live_quality(cfg)
    if not state.healthy:
        console.print(f"[yellow]Not healthy.[/] Fix the errors above, then: rayml serve up {_flags(config, set_)}")
        raise typer.Exit(1)
    console.print(
        f"Next: rayml rollout status --model MODEL {_flags(config, set_)}   |   rayml serve down {_flags(config, set_)}"
    )


@app.command("down")
def down(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    keep_ray: Annotated[bool, typer.Option(help="Keep the local Ray rayml started, even with no application left.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Remove the application (in-flight requests finish first); stop the local serving Ray once nothing is left."""
    from rayml.serve import undeploy

    cfg = load(ServeJobConfig, config, set_)
    start_output("serve-down", verbose)
    existed, stopped = undeploy(cfg, keep_ray=keep_ray)
    console.print(f"Application {cfg.serve.app_name!r} {'removed' if existed else 'was not deployed'}.")
    if stopped:
        console.print("Stopped the local Ray that `rayml serve up` started (no application left).")
    console.print(f"Next: rayml serve up {_flags(config, set_)}")


@app.command("build")
def build(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: Annotated[Path | None, typer.Option(help="Write the YAML here instead of printing it.")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Print the Ray Serve config (for `serve deploy` or KubeRay RayService serveConfigV2), versions resolved.

    Weights and shadow live in the Ingress deployment's user_config: change them there and Serve reconfigures the
    ingress without restarting anything. Changing `args` (e.g. adding a version) makes Serve restart every replica.
    """
    from rayml.serve import build_serve_config

    setup_logging(verbose)
    cfg = load(ServeJobConfig, config, set_)
    text = build_serve_config(cfg)
    if out is None:
        typer.echo(text)
        return
    out.write_text(text)
    console.print(f"Wrote {out}. Next: serve deploy {out}   (or paste `applications` into RayService spec.serveConfigV2)")

"""`rayml rollout start | status | approve | promote | rollback` and `rayml rollback` (blue/green)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from rayml._private.logs import redact_override
from rayml.cli._common import ConfigOpt, SetOpt, VerboseOpt, console, load, table
from rayml.cli._output import start_output
from rayml.config import ServeJobConfig

if TYPE_CHECKING:
    from rayml.serve import RolloutState

app = typer.Typer(
    help="Progressive delivery: shadow phase, canary steps gated on error rate, p95 latency and disagreement; "
    "automatic promote or rollback.",
    no_args_is_help=True,
)

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Served model name.", show_default=False)]


def _flags(config: Path | None, set_: list[str] | None) -> str:
    parts = [f"--config {config}"] if config else []
    parts += [f"--set {redact_override(s)}" for s in set_ or []]  # a key given with --set is not printed back
    return (" " + " ".join(parts)) if parts else ""


def _cfg(config: Path | None, set_: list[str] | None, verbose: bool) -> ServeJobConfig:
    # no connect here: every rayml.serve call connects to the serving Ray first (and fails when there is none)
    cfg = load(ServeJobConfig, config, set_)
    start_output("rollout", verbose)
    return cfg


def _describe(record: dict) -> str:
    event = record["event"]
    step = record.get("step_percent")
    where = "shadow phase" if step is None and record.get("phase") == "shadow" else f"step {step:g}%" if step else ""
    weights = ", ".join(f"v{v}={w:g}" for v, w in record.get("weights", {}).items())
    if event == "step_applied":
        return f"{where}: traffic {weights}"
    if event == "window_restarted":
        return f"{where}: window started again: {record.get('reason')}"
    if event in ("check_passed", "check_failed", "check_inconclusive", "check_passed_waiting", "waiting_for_approval"):
        snap = record.get("snapshot") or {}
        c, s = snap.get("candidate", {}), snap.get("shadow", {})
        numbers = (
            f"candidate {c.get('requests', 0)} req, errors {c.get('error_rate', 0):.2%}, p95 {c.get('p95_ms')} ms; "
            f"shadow {s.get('requests', 0)} mirrored, disagreement {s.get('disagreement')}"
        )
        why = "; ".join(record.get("reasons") or [])
        label = {
            "check_passed": "check passed",
            "check_failed": "check FAILED" + (" (retrying the step)" if record.get("retry") else ""),
            "check_inconclusive": "too little traffic to decide (holding the step)",
            "check_passed_waiting": "check passed, waiting for approval",
            "waiting_for_approval": "check passed; waiting for `rayml rollout approve`",
        }[event]
        return f"{where}: {label}: {numbers}" + (f" -- {why}" if why else "")
    if event == "approved":
        a = record["approval"]
        return f"step {a['step_percent']:g}% approved by {a['by']}" + (f": {a['note']}" if a.get("note") else "")
    if event in ("promoted", "rolled_back"):
        return f"{event.replace('_', ' ').upper()}: {record.get('reason')}"
    return event


@app.command("start")
def start(
    model: ModelOpt,
    candidate: Annotated[str, typer.Option(help="Candidate version number or alias.", show_default=False)],
    steps: Annotated[str | None, typer.Option(help="Canary percents, e.g. 5,25,50,100 (default: rollout.steps).")] = None,
    interval_s: Annotated[
        float | None, typer.Option("--interval-s", help="Seconds per step (default: rollout.interval_s).")
    ] = None,
    shadow_s: Annotated[
        float | None, typer.Option("--shadow-s", help="Shadow phase seconds (default: rollout.shadow_s).")
    ] = None,
    manual: Annotated[str | None, typer.Option(help="Steps that wait for `rollout approve`, e.g. 50,100.")] = None,
    detach: Annotated[bool, typer.Option(help="Return at once; the controller keeps running in the cluster.")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Roll out a candidate version: optional shadow phase, then canary steps, each checked before the next.

    Each step runs --interval-s seconds; its traffic (all ingress replicas) is checked against rollout.* thresholds
    (errors, rejections, latency, shadow disagreement and, with rollout.max_quality_regression, live quality on the
    ground-truth labels posted to the app since the rollout began).
    All steps pass: the candidate is promoted (alias production, old one -> previous). Too many failed checks
    (rollout.failure_budget): automatic rollback to 100% baseline, reason recorded. The controller is a detached
    Ray actor: it keeps going if this command stops (Ctrl-C) and resumes after a crash.
    Exit code: 0 promoted, 1 rolled back (2 for a usage error).
    """
    from rayml.serve import rollout_status, start_rollout

    overrides = list(set_ or [])
    if steps:
        overrides.append(f"rollout.steps=[{steps}]")
    if interval_s is not None:
        overrides.append(f"rollout.interval_s={interval_s}")
    if shadow_s is not None:
        overrides.append(f"rollout.shadow_s={shadow_s}")
    if manual:
        overrides.append(f"rollout.manual_steps=[{manual}]")
    cfg = _cfg(config, overrides, verbose)
    ref: int | str = int(candidate) if candidate.isdigit() else candidate
    state: RolloutState | None  # the status read below may have none
    state = start_rollout(cfg, model, ref)
    flags = _flags(config, set_)
    console.print(
        f"Rollout of {model} v{state.candidate} (baseline v{state.baseline}): "
        f"{'shadow ' + format(cfg.rollout.shadow_s, 'g') + 's, then ' if cfg.rollout.shadow_s else ''}"
        f"steps {', '.join(f'{p:g}%' for p in cfg.rollout.steps)}, {cfg.rollout.interval_s:g}s each"
    )
    if detach:
        console.print(f"Running in the cluster. Next: rayml rollout status --model {model}{flags}")
        return
    seen = 0
    try:
        while True:
            rollout = rollout_status(cfg, model)
            state, history = rollout.state, rollout.history
            for record in history[seen:]:
                console.print(f"  {time.strftime('%H:%M:%S', time.localtime(record['ts']))} {_describe(record)}")
            seen = len(history)
            if state is not None and state.done:
                break
            if (
                state is not None
                and state.phase == "waiting_approval"
                and history
                and history[-1]["event"] == "waiting_for_approval"
            ):
                console.print(f"  Next: rayml rollout approve --model {model}{flags}")
            time.sleep(1.0)
    except KeyboardInterrupt:
        console.print(f"\nStopped following; the rollout goes on. Next: rayml rollout status --model {model}{flags}")
        raise typer.Exit(0) from None
    if state.phase == "promoted":
        console.print(f"[green]Promoted[/] {model} v{state.candidate}. Next: rayml serve status{flags}")
        console.print(f"(undo in one step: rayml rollback --model {model}{flags})")
        return
    console.print(f"[red]Rolled back[/] to v{state.baseline}: {state.reason}\nNext: rayml rollout status --model {model}{flags}")
    raise typer.Exit(1)


@app.command("status")
def status(model: ModelOpt, config: ConfigOpt = None, set_: SetOpt = None, verbose: VerboseOpt = False) -> None:
    """Show the rollout's phase, step, weights, per-version metrics of the current window and its last decisions."""
    from rayml.serve import rollout_status, serve_status, traffic_stats

    cfg = _cfg(config, set_, verbose)
    rollout = rollout_status(cfg, model)
    state = rollout.state
    if state is None:
        console.print(
            f"No rollout of {model} recorded. Next: rayml rollout start --model {model} --candidate VERSION{_flags(config, set_)}"
        )
        raise typer.Exit(1)
    steps = state.cfg.steps
    where = "shadow phase" if state.phase == "shadow" else f"step {state.step_index + 1}/{len(steps)} ({state.step_percent:g}%)"
    running = rollout.controller_running
    console.print(
        f"Rollout {model}: v{state.baseline} -> v{state.candidate}: [bold]{state.phase}[/] at {where}; "
        f"failed checks {state.failures}/{state.cfg.failure_budget} allowed; controller {'running' if running else 'not running'}"
    )
    if state.reason:
        console.print(f"Reason: {state.reason}")
    if state.last_error:
        console.print(f"[yellow]Last error (retrying):[/] {state.last_error}")
    app = serve_status(cfg)
    if app is not None and app.spec is not None and model in app.spec.models:
        m = app.spec.models[model]
        shadow = f"; shadow v{m.shadow.version} {m.shadow.percent:g}%" if m.shadow else ""
        console.print("Weights: " + ", ".join(f"v{v}={w:.0%}" for v, w in sorted(m.weights.items())) + shadow)
    if not state.done:
        window = traffic_stats(cfg, model, since=state.window_start)  # until now
        rows = [[f"v{v}", route, *s.summary(state.task).values()] for (v, route), s in sorted(window.items())]
        cols = ["version", "route", *VersionStatsColumns]
        meaning = "relative |shadow - primary|" if state.task == "regression" else "share of rows whose class changed"
        console.print(table(f"Current window (all ingress replicas; disagreement: {meaning})", cols, rows))
    for a in state.approvals:
        console.print(
            f"Approved step {a['step_percent']:g}% by {a['by']} at {time.strftime('%H:%M:%S', time.localtime(a['at']))}"
        )
    console.print("Last decisions:")
    for record in rollout.history[-6:]:
        console.print(f"  {time.strftime('%H:%M:%S', time.localtime(record['ts']))} {_describe(record)}")
    flags = _flags(config, set_)
    if state.phase == "waiting_approval":
        console.print(f"Next: rayml rollout approve --model {model}{flags}")
    elif not state.done:
        console.print(f"Next: rayml rollout promote --model {model}{flags}   |   rayml rollout rollback --model {model}{flags}")
    else:
        console.print(f"Audit log: {rollout.audit_path}. Next: rayml serve status{flags}")


VersionStatsColumns = [
    "requests",
    "errors",
    "error_rate",
    "rejected",
    "dropped",
    "p50_ms",
    "p95_ms",
    "compared_rows",
    "disagreement",
]


@app.command("approve")
def approve(
    model: ModelOpt,
    note: Annotated[str, typer.Option(help="Why (recorded in the audit log).")] = "",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Approve the current manual step (recorded with who and when); the rollout then moves on."""
    from rayml.serve import approve as do_approve

    cfg = _cfg(config, set_, verbose)
    record = do_approve(cfg, model, note)
    percent = record["approval"]["step_percent"]
    console.print(f"Approved step {percent:g}% of {model}. Next: rayml rollout status --model {model}{_flags(config, set_)}")


def _override(action: str, model: str, reason: str, config: Path | None, set_: list[str] | None, verbose: bool) -> None:
    from rayml.serve import override

    cfg = _cfg(config, set_, verbose)
    state = override(cfg, model, action, reason)
    version = state.candidate if action == "promote" else state.baseline
    console.print(f"{state.phase.replace('_', ' ').capitalize()}: {model} v{version} serves all traffic ({state.reason}).")
    console.print(f"Next: rayml serve status{_flags(config, set_)}")


@app.command("promote")
def promote(
    model: ModelOpt,
    reason: Annotated[str, typer.Option(help="Why (recorded in the audit log).")] = "",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Promote the candidate now, skipping the remaining steps (alias production -> candidate)."""
    _override("promote", model, reason, config, set_, verbose)


@app.command("rollback")
def rollback(
    model: ModelOpt,
    reason: Annotated[str, typer.Option(help="Why (recorded in the audit log).")] = "",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Abort the rollout now: 100% back to the baseline, candidate removed."""
    _override("rollback", model, reason, config, set_, verbose)


def rollback_previous(model: ModelOpt, config: ConfigOpt = None, set_: SetOpt = None, verbose: VerboseOpt = False) -> None:
    """Blue/green rollback: send all traffic to the `previous` version and point `production` at it, in one step."""
    from rayml.serve import rollback_to_previous

    cfg = _cfg(config, set_, verbose)
    now, replaced = rollback_to_previous(cfg, model)
    console.print(f"{model}: v{now} serves all traffic and is `production`; v{replaced} is `previous` (idle).")
    console.print(
        f"Next: rayml serve status{_flags(config, set_)}   (undo: rayml rollback --model {model}{_flags(config, set_)})"
    )

"""Deploy, inspect and remove a rayml Serve application; read its online drift.

Each of these takes the serve job config (``cfg: ServeJobConfig``) whose ``serve.app_name`` names the application,
connects to the serving Ray itself (:func:`rayml.serve._cluster.connect`) and changes the application in stages
(:mod:`rayml.serve._apply`), so an update never drops a request.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from rayml.config import ConfigLike, Overrides, ServeConfig, ServeJobConfig, resolve_config
from rayml.errors import RolloutActiveError, ServeDeployError, UserError
from rayml.serve._apply import AppState, app_state, apply_spec, current_spec, serve_client
from rayml.serve._cluster import connect, outside_event_loop, started_local_head, stop_local_head
from rayml.serve._follow import ensure_follower, stop_follower
from rayml.serve._rollout_runtime import end_rollouts, rollout_active, stop_controllers
from rayml.serve._spec import STATS, AppSpec, keep_placements, keep_route_salt, resolve_spec

if TYPE_CHECKING:
    from rayml.registry import Registry

logger = logging.getLogger("rayml.serve")


def start_serve(cfg: ServeConfig) -> None:
    """Start Serve's proxies on ``host:port`` (or check that the running ones listen there)."""
    from ray import serve

    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    http = serve_client().http_config
    if (http.host, http.port) != (cfg.host, cfg.port):
        raise UserError(
            f"Ray Serve on this cluster already listens on {http.host}:{http.port}; serve.host/port say {cfg.host}:{cfg.port}",
            hint=f"use --set serve.host={http.host} --set serve.port={http.port}, or remove every application first",
        )


def deploy(
    config: ConfigLike = None,
    *,
    overrides: Overrides = None,
    registry: Registry | None = None,
    force: bool = False,
    _follower: bool = True,
) -> AppState:
    """Deploy (or update in place, without dropping a request) the application ``cfg.serve`` describes.

    On a laptop a local Ray is started for serving and outlives this process (`undeploy` stops it); with
    ``RAY_ADDRESS`` set, the application goes to that cluster.

    The change is made against the spec running when this starts (compare-and-swap, see :mod:`rayml.serve._apply`):
    if a rollout step or another command changes the application in between, this refuses rather than undo it.

    Args:
        config: the job config: a ServeJobConfig object, a YAML path or a dict shaped like the YAML (None: defaults).
        overrides: applied on top, as ``{"serve.port": 8001}`` or ``["serve.port=8001"]`` (the CLI's ``--set``).
        registry: the registry to use (default: ``registry.tracking_uri`` of the config).
        force: change models under an active rollout too: their rollouts are ended (recorded as superseded) first.
        _follower: (re)start the alias follower per ``serve.follow_aliases``; False when the follower itself redeploys.

    Returns:
        The application's state once it is running.

    Raises:
        UserError: an unknown model or version, or invalid weights.
        RolloutActiveError: the config changes a model that has a rollout under way (and not ``force``).
        SpecConflictError: the application changed while this was deploying it (nothing more was changed).
        ServeDeployError: Serve could not start a deployment (the message holds the replica errors).

    Example:
        >>> deploy("jobs/configs/serve.yaml").url
        'http://127.0.0.1:8000'
    """
    from rayml.registry import Registry

    cfg = resolve_config(ServeJobConfig, config, overrides)
    registry = registry or Registry(cfg.registry.tracking_uri)
    spec = resolve_spec(cfg, registry)
    connect(start_local=True, metrics_export_port=cfg.serve.metrics_export_port)
    start_serve(cfg.serve)
    running = current_spec(spec.app_name)
    spec = keep_route_salt(running, keep_placements(cfg, running, spec))  # a redeploy keeps sticky keys in place
    _check_rollouts(cfg, running, spec, force)
    # compare-and-swap against what was read above: a change in between (a rollout step) is refused, not undone
    spec = spec.model_copy(update={"revision": running.revision if running is not None else 0})
    t0 = time.perf_counter()
    stages = apply_spec(spec, cfg.serve.deploy_timeout_s, action="rayml serve up")
    logger.info("application %s deployed in %d stage(s), %.1fs", spec.app_name, len(stages), time.perf_counter() - t0)
    if _follower:  # the follower reads the registry this deploy used (which may not be the config's)
        used = cfg.registry.model_copy(update={"tracking_uri": registry.tracking_uri})
        ensure_follower(cfg.model_copy(update={"registry": used}))
    state = app_state(spec.app_name)
    if state is None:  # deleted by someone else in between
        raise ServeDeployError(f"application {spec.app_name!r} disappeared right after it was deployed")
    return state


def _check_rollouts(cfg: ServeJobConfig, running: AppSpec | None, spec: AppSpec, force: bool) -> None:
    """Refuse to change a model whose rollout is under way (``force``: end those rollouts first)."""
    if running is None:
        return
    busy = [name for name, m in sorted(running.models.items()) if spec.models.get(name) != m and rollout_active(cfg, name)]
    if not busy:
        return
    if not force:
        raise RolloutActiveError(
            f"a rollout of {', '.join(busy)} is under way in {cfg.serve.app_name!r}, and this config changes "
            f"{'it' if len(busy) == 1 else 'them'}: deploying it would undo the rollout's traffic split",
            hint=f"wait for it or end it (rayml rollout promote|rollback --model {busy[0]}), or pass --force to end "
            "the rollout and serve the config as written",
        )
    end_rollouts(cfg, busy, "superseded by `rayml serve up --force`: the model now serves what the config says")


def status(cfg: ServeJobConfig) -> AppState | None:
    """Serve's view of the application (deployments, replicas, replica errors, routing); None when not deployed.

    Connects to the serving Ray without starting one.

    Raises:
        ServeNotRunningError: no serving Ray to connect to.
    """
    connect(start_local=False)
    return app_state(cfg.serve.app_name)


def down(cfg: ServeJobConfig, keep_ray: bool = False) -> tuple[bool, bool]:
    """Delete the application; stop the local Ray rayml started once no application is left (unless ``keep_ray``).

    In-flight requests finish first; the application's rollout controllers stop (their state files stay, as a record).

    Returns:
        (whether the application existed, whether the local Ray was stopped).

    Raises:
        ServeNotRunningError: no serving Ray to connect to.
    """
    from ray import serve

    app_name = cfg.serve.app_name
    connect(start_local=False)
    existed = app_state(app_name) is not None
    stop_controllers(app_name)
    stop_follower(app_name)
    if existed:
        serve.delete(app_name)
    stopped = False
    if not keep_ray and started_local_head():
        client = serve_client()
        left = client.get_serve_details().get("applications", {}) if client else {}
        if not left:
            serve.shutdown()
            stop_local_head()
            stopped = True
    return existed, stopped


def drift_status(cfg: ServeJobConfig, model: str | None = None) -> dict[str, dict[int, dict[str, Any]]]:
    """The online drift of every served version, merged over all replicas: ``{model: {version: report}}``.

    A report has ``status`` (ok | warn | alert | insufficient_data), ``rows`` and ``replicas`` of the window shown,
    ``window_start``/``window_end`` (wall-clock seconds), ``complete`` (the last complete window, else the current
    one), ``features`` (per feature: ``metrics`` psi/js or linf/js, ``status``, ``rows``, ``quality``),
    ``prediction`` (prediction drift), ``drifted_features`` and ``warned_features``; model sets add ``segments``.
    Versions that have answered no rows in the last two windows, or have no reference bins, are absent.

    Args:
        cfg: the serve job config (``serve.app_name`` names the application).
        model: only this model (default: all).

    Raises:
        ServeNotRunningError: no serving Ray to connect to.

    Example:
        >>> from rayml.serve import drift_status
        >>> drift_status(cfg)["sales-model"][2]["drifted_features"]
        ['price']
    """
    from ray import serve

    connect(start_local=False)
    if app_state(cfg.serve.app_name) is None:
        return {}
    handle = serve.get_deployment_handle(STATS, cfg.serve.app_name)
    return outside_event_loop(lambda: handle.drift_report.remote(model).result(timeout_s=30))


def live_quality(cfg: ServeJobConfig, model: str) -> dict[int, dict[str, Any]]:
    """A served model's live quality per version: its labelled predictions of the last ``serve.live_quality_window_s``
    (every route) joined to the labels posted to the app, as ``{version: {task, labelled, mae, rmse | accuracy,
    error_rate, logloss, mean_label_delay_s}}``; versions with no labelled prediction are absent.

    Raises:
        ServeNotRunningError: no serving Ray to connect to.

    Example:
        >>> from rayml.serve import live_quality
        >>> live_quality(cfg, "sales-model")[2]["mae"]
        11.8
    """
    from ray import serve

    connect(start_local=False)
    if app_state(cfg.serve.app_name) is None:
        return {}
    handle = serve.get_deployment_handle(STATS, cfg.serve.app_name)
    return outside_event_loop(lambda: handle.live_quality.remote(model).result(timeout_s=30))

"""Register a model made elsewhere: convert it (:func:`rayml.models.convert`), then record it like a trained one.

The conversion and the parity check happen before anything is written to MLflow: a model that cannot be converted
or does not match leaves no run behind. The run (experiment :data:`IMPORT_EXPERIMENT`) holds the parity figures;
the version carries the same lineage tags as a trained version, plus the source framework and the converter.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pandas as pd

from rayml._private.lineage import lineage_tags
from rayml.config.data import SENSITIVE_USES, SensitiveUse
from rayml.data.schema import Schema, apply_feature_policy
from rayml.data.stats import withhold_sensitive
from rayml.errors import ConfigError
from rayml.registry._registry import ModelVersionInfo, Registry, validate_name

if TYPE_CHECKING:
    from rayml.models.importers import ConvertedModel

logger = logging.getLogger("rayml.registry")

IMPORT_EXPERIMENT = "rayml-imports"


def register_model(
    model: Any,
    *,
    name: str,
    sample: pd.DataFrame,
    target: str | None = None,
    task: str = "auto",
    reference: pd.DataFrame | None = None,
    features: Sequence[str] | None = None,
    class_labels: Sequence[Any] | None = None,
    registry: Registry | None = None,
    alias: str | None = None,
    description: str | None = None,
    experiment: str = IMPORT_EXPERIMENT,
    atol: float | None = None,
    rtol: float | None = None,
    forbidden_features: Sequence[str] = (),
    sensitive_columns: Sequence[str] = (),
    allow_sensitive_in: Sequence[SensitiveUse] = (),
) -> ModelVersionInfo:
    """Convert a model made elsewhere, check it on ``sample`` and register it as a new version of ``name``.

    The version is a model directory like a trained one: it serves, shadows, batches, drifts, passes or fails the
    gate and rolls out the same way. Its lineage tags are a trained version's (data fingerprint of ``sample``, code
    commit, library versions, run id) plus ``rayml.source_framework``, ``rayml.source_framework_version``,
    ``rayml.converter`` and ``rayml.converter_version``.

    Args:
        model: what :func:`rayml.models.convert` takes: a fitted scikit-learn estimator or Pipeline, an XGBoost or
            LightGBM model, a ``torch.nn.Module``, an ONNX model or file, or an MLflow model URI with an onnx flavor.
        name: the registered model's name.
        sample: raw rows with the target column: parity is checked on each, reference statistics come from them.
        target, task, reference, features, class_labels: as :func:`rayml.models.convert`.
        atol, rtol: the parity tolerance (None: :func:`rayml.models.convert`'s defaults).
        forbidden_features, sensitive_columns, allow_sensitive_in: the feature policy, as the ``data:`` section's
            fields of the same names (e.g. ``cfg.data.forbidden_features``): a model that takes a forbidden column
            is refused before anything is registered; sensitive columns are recorded with the version and their
            raw values kept out of its reference statistics, input example, batch outputs and captures.
        registry: the registry (default: ``Registry()``, MLflow at ``$MLFLOW_TRACKING_URI`` or under ``$RAYML_HOME``);
            it also resolves a ``models:/`` or ``runs:/`` URI.
        alias: an alias to point at the new version (e.g. ``canary``); None sets none.
        description: the version's description (default: where it came from).
        experiment: the MLflow experiment of the import run.

    Returns:
        The registered version.

    Raises:
        UnsupportedModelError: the model (or a part of it) cannot be converted; the message names the part.
        OnnxParityError: the converted model does not answer as the original does (the worst rows are listed).
        DataError: the sample does not fit the model, or the model takes a forbidden feature (a
            ``DataValidationError`` naming the column and the pattern). InvalidNameError: ``name`` or ``alias`` is
            not allowed.

    Example:
        >>> pipe = make_pipeline(ColumnTransformer([...]), LogisticRegression()).fit(X, y)
        >>> v = rayml.register_model(pipe, name="churn", sample=df.sample(1000), target="churned")
        >>> rayml.Registry().load(v.ref).model_dir.predict_frame(df.head())
    """
    validate_name(name)
    if alias is not None:
        validate_name(alias, "alias")
    # the converters load on first use: a replica that imports the registry to load versions never pays for them
    from rayml.models.importers import PARITY_ATOL, PARITY_RTOL, prepare

    registry = registry or Registry()
    converted = prepare(
        model,
        sample=sample,
        target=target,
        task=task,
        reference=reference,
        features=features,
        class_labels=class_labels,
        atol=PARITY_ATOL if atol is None else atol,
        rtol=PARITY_RTOL if rtol is None else rtol,
        tracking_uri=registry.tracking_uri,
    )
    converted = _with_policy(converted, forbidden_features, sensitive_columns, allow_sensitive_in)
    source = converted.source
    fingerprint = str(converted.meta["data_fingerprint"])
    extra = {
        "rayml.source_framework": source["framework"],
        "rayml.source_framework_version": source["framework_version"],
        "rayml.converter": source["converter"],
        "rayml.converter_version": source["converter_version"],
    }
    run_id = registry.create_run(experiment, f"import-{name}-{fingerprint[:8]}", tags=lineage_tags(fingerprint, "", extra))
    try:
        registry.log_params(
            run_id,
            {
                "name": name,
                "task": converted.task,
                "target": str(target),
                "source_framework": source["framework"],
                "converter": source["converter"],
                "features": ",".join(f["name"] for f in converted.meta["schema"]["features"]),
                "class_labels": ",".join(map(str, converted.meta.get("class_labels", []))),
            },
        )
        registry.log_metrics(run_id, converted.parity)
        tags = lineage_tags(fingerprint, run_id, extra)
        about = description or (
            f"imported from {source['framework']} {source['framework_version']} "
            f"(converted by {source['converter']} {source['converter_version']})"
        )
        with tempfile.TemporaryDirectory(prefix="rayml-import-") as out:
            converted.write(out, lineage=tags)
            info = registry.register(name, out, run_id, tags, description=about)
        if alias is not None:
            registry.set_alias(info.name, info.version, alias)
            info = registry.get_version(info.name, info.version)
    except BaseException:
        registry.end_run(run_id, "FAILED")
        raise
    registry.end_run(run_id)
    logger.info("registered %s (imported from %s)", info.ref, source["framework"])
    return info


def _with_policy(
    converted: ConvertedModel, forbidden: Sequence[str], sensitive: Sequence[str], allowed: Sequence[str]
) -> ConvertedModel:
    """``converted`` under the feature policy: the importers build the schema from the model's own inputs, so the
    policy applies here, before anything reaches MLflow (see :func:`rayml.data.schema.apply_feature_policy`)."""
    bad = [u for u in allowed if u not in SENSITIVE_USES]
    if bad:
        raise ConfigError(
            f"allow_sensitive_in {list(allowed)} has unknown use(s) {bad}", hint=f"use any of {list(SENSITIVE_USES)}"
        )
    if not (forbidden or sensitive):
        return converted
    schema = apply_feature_policy(Schema.from_dict(converted.meta["schema"]), forbidden, sensitive, allowed)
    return replace(
        converted,
        meta={**converted.meta, "schema": schema.to_dict()},
        reference_stats=withhold_sensitive(converted.reference_stats, schema),
    )

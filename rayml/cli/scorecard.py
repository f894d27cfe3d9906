"""`rayml scorecard`: rayml's production readiness by the ML Test Score (Breck et al., 2017).

The rubric has 28 tests in four sections (data, model, infrastructure, monitoring). A test scores 1 when it is
automated, 0.5 when it is done by hand, 0 when it is not done; a section's score is the sum of its tests and the final
score is the lowest section's (above 5 is "exceptional"). Each entry below says how rayml automates the test, where
(``module:object`` of the code, or a repository file with ``#`` and the name inside it), and which test proves it
(``tests/...py::test_name``). ``tests/unit/test_scorecard.py`` keeps every pointer valid and the README's table equal
to ``rayml scorecard --format markdown``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Annotated

import typer

from rayml.cli._common import console, table

AUTOMATED, MANUAL, MISSING = "automated", "manual", "missing"
POINTS = {AUTOMATED: 1.0, MANUAL: 0.5, MISSING: 0.0}
SECTIONS = ("data", "model", "infrastructure", "monitoring")


@dataclass(frozen=True)
class Item:
    """One test of the rubric and how this installation meets it."""

    section: str
    number: int
    test: str  # the paper's wording
    status: str
    how: str
    code: tuple[str, ...]
    tests: tuple[str, ...]

    @property
    def points(self) -> float:
        return POINTS[self.status]


def _i(section: str, number: int, test: str, how: str, code: tuple[str, ...], tests: tuple[str, ...]) -> Item:
    return Item(section, number, test, AUTOMATED, how, code, tests)


ITEMS: tuple[Item, ...] = (
    # --- Tests for features and data -------------------------------------------------------------------------------
    _i(
        "data",
        1,
        "Feature expectations are captured in a schema",
        "every model records its feature schema (types, categories, ranges) and training, batch and serving validate "
        "rows against it, collecting every problem",
        ("rayml.data.schema:infer_schema", "rayml.data.schema:validate"),
        ("tests/unit/test_data.py::test_schema_inference_collects_every_problem",),
    ),
    _i(
        "data",
        2,
        "All features are beneficial",
        "the gate measures permutation importance per feature against a noise level and warns (or fails, "
        "gate.unimportant_features) on features that are not above it",
        ("rayml.gate._features:importance_with_noise", "rayml.gate._features:feature_value"),
        ("tests/unit/test_gate_checks.py::test_a_feature_the_model_ignores_is_not_above_noise",),
    ),
    _i(
        "data",
        3,
        "No feature's cost is too much",
        "the gate report shows each feature's share of the model's operators and bytes (read from its ONNX graph)",
        ("rayml.gate._cost:feature_costs",),
        (
            "tests/unit/test_gate_cost.py::test_an_mlps_categorical_features_own_their_vocabulary_and_embedding",
            "tests/unit/test_gate_cost.py::test_a_tree_ensemble_is_shared_by_the_features_its_splits_test",
        ),
    ),
    _i(
        "data",
        4,
        "Features adhere to meta-level requirements",
        "data.forbidden_features (names or patterns, e.g. personal data) are refused as features on every path",
        (
            "rayml.data.schema:infer_schema",
            "rayml.data.schema:forbidden_feature_problems",
            "rayml.registry._import:register_model",
        ),
        (
            "tests/unit/test_feature_policy.py::test_an_inferred_forbidden_feature_names_the_column_and_the_pattern_and_ignore_columns_fixes_it",
            "tests/unit/test_feature_policy.py::test_train_tune_and_many_models_refuse_a_forbidden_feature_before_training",
            "tests/unit/test_feature_policy.py::test_an_imported_model_gets_the_feature_policy_before_anything_is_registered",
        ),
    ),
    _i(
        "data",
        5,
        "The data pipeline has appropriate privacy controls",
        "data.sensitive_columns never reach reference statistics, batch outputs, captures or logs as raw values",
        (
            "rayml.data.stats:withhold_sensitive",
            "rayml.models.model_dir:ModelDir.withheld_from",
            "rayml.feedback._capture:inputs_for_capture",
        ),
        (
            "tests/unit/test_feature_policy.py::test_the_model_records_its_sensitive_columns_and_no_file_holds_their_training_values",
            "tests/unit/test_feature_policy.py::test_batch_output_never_copies_a_sensitive_column_unless_its_model_allows_it",
            "tests/unit/test_feature_policy.py::test_capture_leaves_out_excluded_and_sensitive_columns",
            "tests/unit/test_feature_policy.py::test_validation_errors_never_quote_a_sensitive_columns_values",
        ),
    ),
    _i(
        "data",
        6,
        "New features can be added quickly",
        "a new column flows through the pipeline: schema change recorded, gated, served",
        (
            "rayml.pipeline._stages:validate_data",
            "rayml.data.schema:schema_changes",
        ),
        ("tests/integration/test_schema_evolution.py::test_a_new_column_is_recorded_gated_promoted_and_served",),
    ),
    _i(
        "data",
        7,
        "All input feature code is tested",
        "the feature encoding lives inside the model (one code path for training and the ONNX graph) and is "
        "parity-checked at every export; the encoders have unit tests",
        ("rayml.models.mlp:encode_numeric", "rayml.models.mlp:encode_categorical", "rayml.models.onnx_export:check_parity"),
        (
            "tests/unit/test_models.py::test_unknown_categories_and_missing_numbers_match_torch",
            "tests/unit/test_models.py::test_standardisation_lives_in_the_model",
        ),
    ),
    # --- Tests for model development -------------------------------------------------------------------------------
    Item(
        "model",
        1,
        "Model specs are reviewed and submitted",
        MANUAL,
        "submitted: automated (every version records the code commit it was trained from; the pipeline's gate "
        "refuses a production candidate trained from uncommitted (-dirty) or unknown code); reviewed: by hand, in "
        "your team's code review of the configs and model code",
        ("rayml._private.lineage:git_commit", "rayml.gate._lineage:unreproducible"),
        (
            "tests/unit/test_gate_checks.py::test_a_release_against_production_needs_a_reproducible_commit",
            "tests/unit/test_gate_checks.py::test_the_pipelines_gate_stage_judges_a_release",
        ),
    ),
    _i(
        "model",
        2,
        "Offline and online metrics correlate",
        "captured predictions are joined to ground-truth labels; live quality is compared with the version's offline "
        "validation value (gauges, alert, `rayml monitor quality`, quality-gated rollout)",
        ("rayml.feedback:quality_report", "clusters/prometheus/rules/rayml.rules.yml#RaymlLiveErrorAboveOffline"),
        ("tests/integration/test_feedback_quality.py::test_quality_joins_every_version_and_a_worse_one_is_a_gap",),
    ),
    _i(
        "model",
        3,
        "All hyperparameters have been tuned",
        "`rayml tune` (ASHA, Optuna) searches every train and model setting; the pipeline's tune path is tested end "
        "to end, resumed after its driver is killed",
        ("rayml.tune:tune", "rayml.pipeline._stages:train_candidate"),
        ("tests/e2e/test_tune_resume.py::test_killed_pipeline_search_resumes_without_rerunning_finished_trials",),
    ),
    _i(
        "model",
        4,
        "The impact of model staleness is known",
        "`rayml monitor staleness` scores the last versions on the newest labelled data against their age; the "
        "pipeline records it every run and it derives the stale alert's threshold",
        ("rayml.monitor:measure_staleness", "rayml.cli.monitor:staleness", "rayml.pipeline._stages:staleness"),
        (
            "tests/unit/test_staleness.py::test_older_versions_score_worse_and_the_fitted_trend_gives_the_max_age",
            "tests/unit/test_staleness.py::test_the_pipeline_stage_records_staleness_and_never_fails",
        ),
    ),
    _i(
        "model",
        5,
        "A simpler model is not better",
        "the gate requires beating the constant model and a linear model (ridge / logistic) fitted on the gate's data",
        ("rayml.gate._baselines:linear_baseline",),
        (
            "tests/unit/test_gate_checks.py::test_a_candidate_that_does_not_beat_the_linear_baseline_fails_warns_or_is_let_through",
            "tests/unit/test_gate_checks.py::test_the_linear_baseline_is_cross_fitted_so_it_never_scores_rows_it_was_fitted_on",
        ),
    ),
    _i(
        "model",
        6,
        "Model quality is sufficient on important data slices",
        "the gate judges the primary metric per slice (segment) and fails a slice that regresses beyond its limit",
        ("rayml.gate:run_gate",),
        ("tests/integration/test_gate_and_drift.py::test_a_regressing_slice_fails_the_gate",),
    ),
    _i(
        "model",
        7,
        "The model is tested for considerations of inclusion",
        "gate.group_columns: the metric per group; a gap beyond gate.max_group_gap fails the gate (table and plot)",
        ("rayml.gate._groups:group_gaps", "rayml.gate._groups:plot_groups"),
        (
            "tests/unit/test_gate_checks.py::test_groups_are_reported_plotted_and_logged",
            "tests/unit/test_gate_checks.py::test_group_gap_matches_its_definition_for_generated_groups",
        ),
    ),
    # --- Tests for ML infrastructure -------------------------------------------------------------------------------
    _i(
        "infrastructure",
        1,
        "Training is reproducible",
        "seeded training gives the same metrics; every version records data fingerprint, code commit, params",
        ("rayml.train:train", "rayml.data:fingerprint"),
        (
            "tests/integration/test_train.py::"
            "test_loss_falls_early_stopping_registers_the_best_epoch_with_lineage_seeded_runs_match_and_rerun_is_a_noop",
        ),
    ),
    _i(
        "infrastructure",
        2,
        "Model specs are unit tested",
        "model builders and user network factories are unit tested, with a dry run that checks a factory's outputs",
        ("rayml.models.factory:build_body",),
        ("tests/unit/test_model_factory.py::test_wrong_output_shape_fails_on_the_dry_run",),
    ),
    _i(
        "infrastructure",
        3,
        "The ML pipeline is integration tested",
        "continuous training (validate -> train -> gate -> register -> promote) runs on real Ray and MLflow in the "
        "suite, with a crash and a gate refusal resumed",
        ("rayml.pipeline:run_pipeline",),
        (
            "tests/integration/test_pipeline.py::test_crash_and_gate_failure_leave_production_and_reruns_resume_where_they_stopped",
        ),
    ),
    _i(
        "infrastructure",
        4,
        "Model quality is validated before serving",
        "the gate (finite outputs, trivial and linear baselines, regression vs production, slices) runs before a "
        "version is aliased or rolled out",
        ("rayml.gate:run_gate", "rayml.pipeline._stages:gate"),
        ("tests/integration/test_gate_and_drift.py::test_gate_refuses_wild_and_nan_candidates",),
    ),
    _i(
        "infrastructure",
        5,
        "The model is debuggable",
        "the training loop runs in one process with no Ray (`rayml train --in-process`): the same code path, breakpoints work",
        ("rayml.train:train", "rayml.train._local:fit_in_process"),
        (
            "tests/unit/test_train_in_process.py::test_in_process_trains_the_users_network_here_without_ray_and_registers_what_a_ray_run_does",
        ),
    ),
    _i(
        "infrastructure",
        6,
        "Models are canaried before serving",
        "`rayml rollout start` moves weighted traffic in steps, gated on live metrics, before promotion",
        ("rayml.serve._rollout:RolloutController", "rayml.serve._rollout:evaluate"),
        ("tests/unit/test_serve_rollout.py::test_a_good_candidate_walks_every_step_and_is_promoted",),
    ),
    _i(
        "infrastructure",
        7,
        "Serving models can be rolled back",
        "automatic rollback on bad metrics, and `rayml rollback --model NAME` restores `previous` in one command",
        ("rayml.cli.rollout:rollback_previous",),
        ("tests/integration/test_serve_rollout.py::test_blue_green_rollback_restores_previous_in_one_command",),
    ),
    # --- Monitoring tests for ML -----------------------------------------------------------------------------------
    _i(
        "monitoring",
        1,
        "Dependency changes result in notification",
        "a replica compares the library versions recorded with a version to its own: a gauge and an alert",
        ("rayml.serve._dependencies:compare", "clusters/prometheus/rules/rayml.rules.yml#RaymlDependencyMismatch"),
        (
            "tests/unit/test_serve_dependencies.py::test_a_loaded_version_exports_its_dependencies_and_a_retired_one_stops",
            "tests/unit/test_serve_dependencies.py::test_a_library_mismatches_exactly_when_its_major_or_minor_release_differs",
        ),
    ),
    _i(
        "monitoring",
        2,
        "Data invariants hold for inputs",
        "training and batch validate inputs against the schema; serving counts data-quality problems per feature, "
        "with an alert (and one on prediction drift, RaymlPredictionDrift)",
        ("rayml.monitor.drift:count_values", "clusters/prometheus/rules/rayml.rules.yml#RaymlDataQualityErrors"),
        (
            "tests/unit/test_monitor_drift.py::test_data_quality_counters",
            "tests/unit/test_observability_config.py::test_every_alert_has_a_summary_and_a_promtool_test_that_fires_it",
        ),
    ),
    _i(
        "monitoring",
        3,
        "Training and serving are not skewed",
        "the ONNX graph that serves is parity-checked against the trained model; serving traffic is compared with "
        "the training reference statistics (drift gauges, alert)",
        ("rayml.models.onnx_export:check_parity", "clusters/prometheus/rules/rayml.rules.yml#RaymlFeatureDrift"),
        ("tests/integration/test_serve_drift.py::test_drifted_traffic_alerts_clean_stays_ok_and_two_replicas_merge_exactly",),
    ),
    _i(
        "monitoring",
        4,
        "Models are not too stale",
        "the last successful training time is a gauge with an alert whose age limit the staleness measurement derives",
        ("clusters/prometheus/rules/rayml.rules.yml#RaymlModelStale", "rayml.monitor:measure_staleness"),
        (
            "tests/unit/test_staleness.py::test_older_versions_score_worse_and_the_fitted_trend_gives_the_max_age",
            "tests/unit/test_staleness.py::test_the_pipeline_stage_records_staleness_and_never_fails",
        ),
    ),
    _i(
        "monitoring",
        5,
        "Models are numerically stable",
        "training stops on a NaN/inf loss with a clear error; the gate refuses and serving rejects non-finite outputs",
        ("rayml.train._loop:run_loop", "rayml.train._numerics:non_finite_loss", "rayml.serve._model:ModelServer"),
        (
            "tests/unit/test_train_in_process.py::test_a_non_finite_training_loss_stops_at_once_names_epoch_and_batch_and_registers_nothing",
            "tests/integration/test_train.py::test_a_diverged_ray_run_fails_at_once_without_retries_and_registers_nothing",
            "tests/unit/test_serve_nonfinite.py::test_the_ingress_answers_a_non_finite_prediction_by_whose_fault_it_is",
        ),
    ),
    _i(
        "monitoring",
        6,
        "Computing performance has not regressed",
        "each version records training time, peak memory and a serving probe; the gate compares them with "
        "production's; serving latency has an SLO alert",
        (
            "rayml.models:probe_serving",
            "rayml.registry._registry:probe_version",
            "rayml.gate._perf:performance",
            "clusters/prometheus/rules/rayml.rules.yml#RaymlLatencySLO",
        ),
        (
            "tests/unit/test_perf_records.py::test_a_trained_version_records_its_training_figures_and_the_serving_probe",
            "tests/unit/test_gate_checks.py::test_performance_regressions_are_measured_side_by_side_and_read_from_tags",
        ),
    ),
    _i(
        "monitoring",
        7,
        "Prediction quality has not regressed",
        "live quality on ground-truth labels against offline quality (gauges, alerts); a rollout that degrades it is rolled back",
        ("rayml.serve._rollout:quality_check", "clusters/prometheus/rules/rayml.rules.yml#RaymlLiveErrorAboveOffline"),
        (
            "tests/integration/test_closed_loop.py::"
            "test_a_healthy_but_wrong_candidate_is_rolled_back_on_live_quality_and_a_good_one_promoted",
        ),
    ),
)


def section_scores(items: tuple[Item, ...] = ITEMS) -> dict[str, float]:
    """Points per section (0-7 each)."""
    return {s: sum(i.points for i in items if i.section == s) for s in SECTIONS}


def final_score(items: tuple[Item, ...] = ITEMS) -> float:
    """The ML Test Score: the lowest section's points."""
    return min(section_scores(items).values())


def markdown(items: tuple[Item, ...] = ITEMS) -> str:
    """The scorecard as the README's Markdown table, followed by the scores."""
    lines = ["| section | # | test | status | how rayml does it | proved by |", "|---|---|---|---|---|---|"]
    for i in items:
        proof = "<br>".join(f"`{t.split('::')[-1]}`" for t in i.tests)
        lines.append(f"| {i.section} | {i.number} | {i.test} | {i.status} | {i.how} | {proof} |")
    scores = section_scores(items)
    lines.append("")
    lines.append(
        "Score per section: "
        + ", ".join(f"{s} {scores[s]:g}/7" for s in SECTIONS)
        + f". Final score (the lowest section): **{final_score(items):g}**."
    )
    return "\n".join(lines)


class Format(str, Enum):
    table = "table"
    markdown = "markdown"
    json = "json"


def scorecard(
    format_: Annotated[
        Format, typer.Option("--format", help="table (default), markdown (the README's), or json.")
    ] = Format.table,
    details: Annotated[bool, typer.Option("--details", help="Also list the code and the test behind every item.")] = False,
) -> None:
    """The ML Test Score of this installation: the 28 tests of Breck et al. (2017), which rayml automates and where
    (the code and the test that proves it), and the score per section (the final score is the lowest section's)."""
    if format_ is Format.json:
        body = {"items": [asdict(i) for i in ITEMS], "sections": section_scores(), "score": final_score()}
        console.print_json(json.dumps(body))
        return
    if format_ is Format.markdown:
        console.print(markdown(), markup=False, highlight=False)
        return
    scores = section_scores()
    for s in SECTIONS:
        items = [x for x in ITEMS if x.section == s]
        if not details:
            console.print(
                table(
                    f"{s}: {scores[s]:g}/7", ["#", "test", "status", "how"], [[i.number, i.test, i.status, i.how] for i in items]
                )
            )
            continue
        console.print(f"[bold]{s}: {scores[s]:g}/7[/bold]")
        for i in items:
            console.print(f"  {i.number}. {i.test} [{i.status}]", markup=False)
            console.print(f"     how: {i.how}", markup=False)
            console.print(f"     code: {', '.join(i.code)}", markup=False)
            console.print(f"     proved by: {', '.join(i.tests)}", markup=False)
    console.print(
        f"ML Test Score: {final_score():g} (the lowest section; "
        + ", ".join(f"{s} {scores[s]:g}" for s in SECTIONS)
        + ")."
        + ("" if details else " Next: rayml scorecard --details shows the code and the test behind each item.")
    )

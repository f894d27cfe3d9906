"""Your own torch network (``model.factory``): loading and its errors, the body contract, export with parity, the spec
round trip, lineage, and searching its keyword arguments. The network under test lives outside rayml/
(``jobs/examples/tabular_nets.py``)."""

from __future__ import annotations

import json
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from rayml.config import DataConfig, TrainJobConfig, TuneJobConfig, resolve_config
from rayml.data import infer_schema
from rayml.errors import ConfigError, ModelError, OnnxParityError
from rayml.models import ModelSpec, OnnxPredictor, build_model, build_spec, check_parity, export_onnx, torch_predict
from rayml.models.factory import (
    FeatureSchema,
    build_body,
    extend_import_path,
    import_path,
    load_factory,
    model_source,
)
from rayml.testing import MULTICLASS_LABELS, MULTICLASS_TARGET, multiclass_frame, sample_frame
from rayml.train import run_name_for
from rayml.tune import trial_config
from rayml.tune._space import decode

EXAMPLE = "jobs.examples.tabular_nets:resnet_mlp"
TARGETS = {"regression": "sales", "binary": "high_sales", "multiclass": MULTICLASS_TARGET}


def _spec(task: str, factory: str | None = EXAMPLE, **kwargs: object) -> tuple[ModelSpec, object]:
    df = multiclass_frame() if task == "multiclass" else sample_frame()
    ignore = [c for c in ("date", "sales", "high_sales", MULTICLASS_TARGET) if c != TARGETS[task] and c in df.columns]
    schema = infer_schema(df, DataConfig(task=task, target=TARGETS[task], segment=["store_id"], ignore_columns=ignore))
    return build_spec(df, schema, [8], 0.0, 4, factory=factory, factory_kwargs=kwargs), df


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Write a uniquely named module into a folder on sys.path; returns a function (source -> module name)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    names: list[str] = []

    def write(source: str) -> str:
        name = f"user_nets_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        names.append(name)
        return name

    yield write
    for name in names:
        sys.modules.pop(name, None)


# --- the reference string ---------------------------------------------------------------------------------------------
_IDENT = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)


@given(st.text(max_size=30))
@settings(max_examples=200, deadline=None)
def test_any_string_is_a_valid_reference_or_a_clear_config_error(ref: str) -> None:
    parts = ref.partition(":")
    valid = parts[1] == ":" and all(p.isidentifier() for p in [*parts[0].split("."), *parts[2].split(".")])
    try:
        cfg = resolve_config(TrainJobConfig, {"model": {"factory": ref}})
    except ConfigError as e:
        assert not valid
        assert "package.module:function" in str(e) and "model.factory" in str(e)
        with pytest.raises(ConfigError, match="package.module:function"):
            load_factory(ref)
    else:
        assert valid and cfg.model.factory == ref


@given(st.lists(_IDENT, min_size=1, max_size=3), _IDENT)
@settings(max_examples=50, deadline=None)
def test_well_formed_references_pass_config_validation(module_parts: list[str], attr: str) -> None:
    ref = f"{'.'.join(module_parts)}:{attr}"
    assert resolve_config(TrainJobConfig, {"model": {"factory": ref}}).model.factory == ref


def test_factory_kwargs_must_be_keyword_names_with_json_values() -> None:
    with pytest.raises(ConfigError, match="Python identifiers"):
        resolve_config(TrainJobConfig, {"model": {"factory": EXAMPLE, "factory_kwargs": {"not a name": 1}}})
    with pytest.raises(ConfigError, match="JSON values"):
        resolve_config(TrainJobConfig, {"model": {"factory": EXAMPLE, "factory_kwargs": {"width": object()}}})
    cfg = resolve_config(TrainJobConfig, {"model": {"factory": EXAMPLE}}, ["model.factory_kwargs.width=16"])
    assert cfg.model.factory_kwargs == {"width": 16}


# --- loading -----------------------------------------------------------------------------------------------------------
def test_missing_module_names_the_ways_to_ship_it() -> None:
    with pytest.raises(ConfigError) as e:
        load_factory("no_such_module_xyz:net")
    msg = str(e.value)
    assert "'no_such_module_xyz' is not importable" in msg
    assert "PYTHONPATH" in msg and "--working-dir" in msg


def test_missing_dependency_of_the_module_is_named(module) -> None:
    name = module("import not_installed_dep_xyz\n")
    with pytest.raises(ConfigError, match="install 'not_installed_dep_xyz'"):
        load_factory(f"{name}:net")


def test_module_that_raises_on_import(module) -> None:
    name = module("raise RuntimeError('boom at import')\n")
    with pytest.raises(ConfigError, match="RuntimeError: boom at import"):
        load_factory(f"{name}:net")


def test_missing_attribute_lists_what_the_module_defines(module) -> None:
    name = module("def resnet(schema):\n    pass\n")
    with pytest.raises(ConfigError) as e:
        load_factory(f"{name}:resnt")
    assert "has no 'resnt'" in str(e.value) and "resnet" in str(e.value)


def test_attribute_that_is_not_callable(module) -> None:
    name = module("WIDTH = 3\n")
    with pytest.raises(ConfigError, match="is a int, not a callable"):
        load_factory(f"{name}:WIDTH")


def test_the_current_directory_is_searched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"cwd_nets_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("def net(schema):\n    pass\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    try:
        assert callable(load_factory(f"{name}:net"))
        assert import_path(f"{name}:net") == [str(tmp_path)]
    finally:
        sys.modules.pop(name, None)


def test_workers_get_the_drivers_import_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    extend_import_path([str(tmp_path), str(tmp_path / "not-on-this-node")])
    assert sys.path[-1] == str(tmp_path)  # appended: never shadows what the worker already imports
    assert str(tmp_path / "not-on-this-node") not in sys.path
    assert import_path(EXAMPLE) == [str(Path(__file__).resolve().parents[2])]  # jobs/ is a namespace package


# --- the body contract -------------------------------------------------------------------------------------------------
def test_schema_given_to_the_factory() -> None:
    spec, _ = _spec("multiclass")
    schema = FeatureSchema.from_spec(spec)
    assert schema.numeric == tuple(spec.numeric) and schema.categorical == tuple(spec.categorical)
    assert schema.cardinalities == tuple(len(c) + 1 for c in spec.categories)  # the unknown slot 0 included
    assert (schema.task, schema.n_classes, schema.n_outputs) == ("multiclass", len(MULTICLASS_LABELS), 3)
    binary = FeatureSchema.from_spec(_spec("binary")[0])
    assert (binary.n_classes, binary.n_outputs) == (2, 1)


def test_factory_that_returns_no_module(module) -> None:
    name = module("def net(schema):\n    return lambda num, cat: num\n")
    with pytest.raises(ConfigError, match="returned a function, not a torch.nn.Module"):
        build_body(_spec("regression", f"{name}:net")[0])


def test_unknown_keyword_argument_names_the_kwargs() -> None:
    with pytest.raises(ConfigError, match=r"TypeError.*factory_kwargs=\{'widht': 8\}"):
        build_body(_spec("regression", widht=8)[0])


_WIDE = """
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, schema, outputs, cardinality_slack=0):
            super().__init__()
            self.emb = nn.ModuleList(nn.Embedding(c - cardinality_slack, 2) for c in schema.cardinalities)
            self.lin = nn.Linear(schema.n_numeric + 2 * schema.n_categorical, outputs)

        def forward(self, numeric, categorical):
            parts = [numeric] + [e(categorical[:, i]) for i, e in enumerate(self.emb)]
            return self.lin(torch.cat(parts, dim=1))

    def net(schema, outputs=1, cardinality_slack=0):
        return Net(schema, outputs, cardinality_slack)
"""


@pytest.mark.parametrize(
    ("task", "outputs", "expected"), [("regression", 2, r"\[N\] or \[N, 1\]"), ("multiclass", 1, r"\[N, 3\]")]
)
def test_wrong_output_shape_fails_on_the_dry_run(module, task: str, outputs: int, expected: str) -> None:
    name = module(_WIDE)
    with pytest.raises(ConfigError, match=f"returned shape \\[2, {outputs}\\].*{expected}"):
        build_body(_spec(task, f"{name}:net", outputs=outputs)[0])


def test_embedding_without_the_unknown_slot_fails_on_the_dry_run(module) -> None:
    name = module(_WIDE)
    with pytest.raises(ConfigError, match="2-row dry run.*IndexError") as e:
        build_body(_spec("regression", f"{name}:net", cardinality_slack=1)[0])
    assert "schema.cardinalities" in str(e.value)


def test_the_dry_run_leaves_the_body_as_built(module) -> None:
    name = module(
        """
        from torch import nn

        class Net(nn.Module):
            def __init__(self, schema):
                super().__init__()
                self.norm = nn.BatchNorm1d(schema.n_numeric)
                self.lin = nn.Linear(schema.n_numeric, 1)

            def forward(self, numeric, categorical):
                return self.lin(self.norm(numeric))

        def net(schema):
            return Net(schema)
        """
    )
    body = build_body(_spec("regression", f"{name}:net")[0])
    assert body.training  # back in training mode
    assert int(body.norm.num_batches_tracked) == 0  # run in eval(): the batch norm statistics are untouched


# --- export, parity, round trip, lineage -------------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["regression", "binary", "multiclass"])
def test_factory_model_exports_with_parity(task: str) -> None:
    spec, df = _spec(task, width=16, depth=1)
    model = build_model(spec, seed=0)
    onnx_bytes = export_onnx(model)
    assert check_parity(model, onnx_bytes, df) <= 1e-4
    predictor = OnnxPredictor(onnx_bytes)
    assert {i.name for i in predictor.inputs} == set(spec.numeric) | set(spec.categorical)  # raw columns
    outputs = predictor.predict_all(df)
    if task == "multiclass":
        assert [o.name for o in predictor.outputs] == ["label", "probabilities"]
        assert outputs["probabilities"].shape == (len(df), 3)
        assert np.allclose(outputs["probabilities"].sum(axis=1), 1.0, atol=1e-5)
        assert set(outputs["label"]) <= set(MULTICLASS_LABELS)
    else:
        assert [o.name for o in predictor.outputs] == ["prediction"]
        assert outputs["prediction"].shape == (len(df),)
    if task == "binary":
        assert ((outputs["prediction"] >= 0) & (outputs["prediction"] <= 1)).all()


def test_spec_round_trip_rebuilds_the_same_network() -> None:
    spec, df = _spec("regression", width=8, depth=3)
    model = build_model(spec, seed=1)
    again = ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec and again.factory == EXAMPLE and again.factory_kwargs == {"width": 8, "depth": 3}
    rebuilt = build_model(again)
    rebuilt.load_state_dict(model.state_dict())
    np.testing.assert_array_equal(torch_predict(rebuilt, df), torch_predict(model, df))
    old = {k: v for k, v in spec.to_dict().items() if k not in ("factory", "factory_kwargs")}
    assert ModelSpec.from_dict(old).factory is None  # a spec written before factories rebuilds rayml's MLP


def test_unexportable_operator_names_the_factory(module) -> None:
    name = module(
        """
        import torch
        from torch import nn

        class Net(nn.Module):
            def __init__(self, schema):
                super().__init__()
                self.lin = nn.Linear(schema.n_numeric, 1)

            def forward(self, numeric, categorical):
                return self.lin(numeric)[:, 0] + torch.histc(numeric, bins=3).sum()

        def net(schema):
            return Net(schema)
        """
    )
    spec, _ = _spec("regression", f"{name}:net")
    with pytest.raises(ModelError) as e:
        export_onnx(build_model(spec, seed=0))
    msg = str(e.value)
    assert f"model.factory '{name}:net' cannot be exported to ONNX" in msg and "aten::histc" in msg and "Hint:" in msg


def test_parity_failure_of_a_factory_blames_the_network(module) -> None:
    name = module(
        """
        import torch
        from torch import nn

        class Noisy(nn.Module):
            def __init__(self, schema):
                super().__init__()
                self.lin = nn.Linear(schema.n_numeric, 1)

            def forward(self, numeric, categorical):
                return self.lin(numeric)[:, 0] + torch.rand(numeric.shape[0])  # random even in eval()

        def net(schema):
            return Noisy(schema)
        """
    )
    spec, df = _spec("binary", f"{name}:net")
    model = build_model(spec, seed=0)
    with pytest.raises(OnnxParityError, match=f"model.factory '{name}:net'.*deterministic in eval"):
        check_parity(model, export_onnx(model), df.head(50))


def test_source_metadata_names_the_network() -> None:
    spec, _ = _spec("regression", width=8)
    assert model_source(spec) == {
        "framework": "torch-factory",
        "factory": EXAMPLE,
        "factory_kwargs": {"width": 8},
        "torch": torch.__version__,
    }
    assert model_source(_spec("regression", factory=None)[0]) == {"framework": "rayml-mlp", "torch": torch.__version__}


def test_editing_the_network_names_a_new_run(module, tmp_path: Path) -> None:
    name = module(_WIDE)
    cfg = resolve_config(TrainJobConfig, {"model": {"factory": f"{name}:net"}})
    first = run_name_for(cfg, "fp")
    assert run_name_for(cfg, "fp") == first
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(_WIDE) + "\n# wider\n")
    assert run_name_for(cfg, "fp") != first


# --- tune --------------------------------------------------------------------------------------------------------------
def _tune(space: dict, model: dict | None = None) -> TuneJobConfig:
    return TuneJobConfig.model_validate({"model": model or {"factory": EXAMPLE}, "tune": {"space": space}})


def test_factory_kwargs_are_searchable_and_reach_the_trial() -> None:
    cfg = _tune(
        {
            "model.factory_kwargs.width": {"type": "choice", "values": [16, 32]},
            "model": {"factory_kwargs": {"depth": {"randint": [1, 3]}}},  # nested form
            "train.learning_rate": {"loguniform": [1e-3, 1e-2]},
        },
        {"factory": EXAMPLE, "factory_kwargs": {"width": 8, "embedding_dim": 2}},
    )
    assert set(cfg.tune.space) == {"model.factory_kwargs.width", "model.factory_kwargs.depth", "train.learning_rate"}
    values = {"model.factory_kwargs.width": 32, "model.factory_kwargs.depth": 2, "train.learning_rate": 0.005}
    trial = trial_config(cfg, decode(cfg, values))
    assert trial.model.factory_kwargs == {"width": 32, "depth": 2, "embedding_dim": 2}
    assert trial.model.factory == EXAMPLE and trial.train.learning_rate == 0.005


@pytest.mark.parametrize(
    ("space", "model", "message"),
    [
        ({"model.factory_kwargs.width": {"choice": [8]}}, {"name": "m"}, "model.factory is null"),
        ({"model.factory_kwargs.2wide": {"choice": [8]}}, None, "'2wide' is not a keyword argument name"),
        ({"model.hidden_sizes": {"choice": [[8]]}}, None, "shapes rayml's MLP, which model.factory"),
        ({"model.factory_kwargs.width": {"uniform": [2, 1]}}, None, "low (2) must be less than high (1)"),
    ],
)
def test_bad_searches_of_factory_kwargs(space: dict, model: dict | None, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        _tune(space, model)
    assert message in str(e.value)


def test_a_driver_whose_current_directory_is_gone_still_finds_an_imported_factory(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ray job's working dir can be cleaned up under a long-running driver: loading the factory again (the driver
    does it several times) must not ask for the current directory, and a missing module still gets a clear error."""

    def gone() -> str:
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "jobs" / "examples"))
    first = load_factory("tabular_nets:resnet_mlp")
    monkeypatch.setattr("os.getcwd", gone)
    assert load_factory("tabular_nets:resnet_mlp") is first
    with pytest.raises(ConfigError, match="is not importable"):
        load_factory(f"no_such_module_{uuid.uuid4().hex}:net")

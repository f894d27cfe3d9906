"""Your own torch network (``model.factory``) trained by Ray Train, exported with parity and registered with lineage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rayml.config import DataConfig
from rayml.data import load_table
from rayml.models import ModelSpec
from rayml.registry import Registry
from rayml.train import train

pytestmark = pytest.mark.usefixtures("ray_session")

EXAMPLES = Path(__file__).resolve().parents[2] / "jobs" / "examples"


def test_factory_network_trains_exports_and_registers(tmp_path: Path, tracking_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # importable as a top-level module on the driver only: the Ray Train worker finds it through the driver's path
    monkeypatch.syspath_prepend(str(EXAMPLES))
    overrides = {
        "data.synthetic.segments": 4,
        "data.synthetic.rows_per_segment": 60,
        "model.name": "resnet-model",
        "model.factory": "tabular_nets:resnet_mlp",
        "model.factory_kwargs": {"width": 16, "depth": 1},
        "train.epochs": 2,
        "train.batch_size": 32,
        "train.learning_rate": 0.01,
        "train.storage_path": str(tmp_path / "runs"),
        "registry.tracking_uri": tracking_uri,
    }
    result = train(None, overrides=overrides)
    assert result.epochs_completed == 2 and result.model_version is not None

    loaded = Registry(tracking_uri).load(result.model_version.ref)
    meta = json.loads((loaded.path / "rayml_model.json").read_text())
    assert meta["source"]["framework"] == "torch-factory"
    assert meta["source"]["factory"] == "tabular_nets:resnet_mlp"
    assert meta["source"]["factory_kwargs"] == {"width": 16, "depth": 1}
    spec = ModelSpec.from_dict(meta["spec"])  # what rebuilds the network from a checkpoint
    assert (spec.factory, spec.factory_kwargs) == ("tabular_nets:resnet_mlp", {"width": 16, "depth": 1})
    assert meta["parity_max_abs_diff"] <= 1e-4

    rows = load_table(DataConfig(synthetic={"segments": 4, "rows_per_segment": 60})).head(40)
    preds = loaded.predict(rows)  # the ONNX graph on raw columns
    assert preds.shape == (40,) and np.isfinite(preds).all() and preds.std() > 0

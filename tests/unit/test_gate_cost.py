"""What each feature costs a model: its own footprint in the ONNX graph (rayml's MLP, a tree ensemble)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from rayml.gate import feature_costs
from rayml.testing import write_tiny_model


def test_an_mlps_categorical_features_own_their_vocabulary_and_embedding(tmp_path: Path) -> None:
    md = write_tiny_model(tmp_path / "m", task="regression")
    costs = feature_costs(md.model_file, [*md.input_names, "not_an_input"])
    assert set(costs) == set(md.input_names)
    graph = onnx.load(str(md.model_file)).graph
    embedding = {t.name: t.ByteSize() for t in graph.initializer}["model.embeddings.0.weight"]  # region's table
    numeric = ["price", "temperature", "competitor_distance", "day_of_week", "month"]
    for f in numeric:
        assert costs[f]["nodes"] == 1  # its Unsqueeze; the scaler and first layer are shared ops
        assert costs[f]["bytes"] == pytest.approx(costs["price"]["bytes"])  # its scaler constants and weight column
    assert costs["price"]["bytes"] > 0
    for f in ("region", "category", "promo"):
        assert costs[f]["nodes"] == 3  # LabelEncoder, Unsqueeze, embedding Gather
        assert costs[f]["bytes"] > costs["price"]["bytes"]
    assert costs["region"]["bytes"] > embedding
    assert 0.5 < sum(c["size_share"] for c in costs.values()) < 1.0  # the hidden layers are nobody's own
    assert all(0 < c["nodes_share"] < 1 for c in costs.values())


def test_a_tree_ensemble_is_shared_by_the_features_its_splits_test(tmp_path: Path) -> None:
    """Splits: 3 test `a` (column 0), 1 tests `b` (column 1), none tests `c`; 5 leaves."""
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N"]) for n in ("a", "b", "c")]
    shape = numpy_helper.from_array(np.asarray([-1, 1], dtype=np.int64), "shape")
    nodes = [helper.make_node("Reshape", [n, "shape"], [f"{n}_col"]) for n in ("a", "b", "c")]
    nodes.append(helper.make_node("Concat", ["a_col", "b_col", "c_col"], ["x"], axis=1))
    ids = [0, 1, 2, 3, 4, 5, 6, 7, 8]
    modes = ["BRANCH_LEQ", "BRANCH_LEQ", "BRANCH_LEQ", "BRANCH_LEQ", "LEAF", "LEAF", "LEAF", "LEAF", "LEAF"]
    nodes.append(
        helper.make_node(
            "TreeEnsembleRegressor",
            ["x"],
            ["prediction"],
            domain="ai.onnx.ml",
            nodes_treeids=[0] * 9,
            nodes_nodeids=ids,
            nodes_featureids=[0, 0, 1, 0, 0, 0, 0, 0, 0],
            nodes_modes=modes,
            nodes_values=[0.5] * 9,
            nodes_truenodeids=[1, 2, 4, 5, 0, 0, 0, 0, 0],
            nodes_falsenodeids=[3, 6, 7, 8, 0, 0, 0, 0, 0],
            target_treeids=[0] * 5,
            target_nodeids=[4, 5, 6, 7, 8],
            target_ids=[0] * 5,
            target_weights=[1.0, 2.0, 3.0, 4.0, 5.0],
            n_targets=1,
        )
    )
    out = [helper.make_tensor_value_info("prediction", TensorProto.FLOAT, ["N", 1])]
    graph = helper.make_graph(nodes, "trees", inputs, out, [shape])
    path = tmp_path / "trees.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("ai.onnx.ml", 3)]), path)
    costs = feature_costs(path, ["a", "b", "c"])
    # each Reshape owns a third of the shape constant they share; beyond it, a's splits weigh three times b's
    own = {f: costs[f]["bytes"] - costs["c"]["bytes"] for f in ("a", "b")}
    assert own["a"] == pytest.approx(3 * own["b"]) and own["b"] > 0
    assert costs["c"]["bytes"] == pytest.approx(shape.ByteSize() / 3)  # no split tests c: only its Reshape's share
    assert all(c["nodes"] == 1 for c in costs.values())

"""What each feature costs the model: the part of its ONNX graph that exists for that feature alone.

Timing one feature inside an ONNX graph is not possible (a column held constant costs the same to compute), so the
gate measures each feature's *footprint* instead, statically, from the graph the replicas run:

- ``nodes``: the operators that read only that feature (its cast, reshape, vocabulary lookup, encoder, imputer):
  its preprocessing, which runs on every request;
- ``bytes``: the parameters that serve only that feature: its vocabulary and encoder tables, its embedding, its
  scaler constants and first-layer weight columns (Gemm / MatMul), and its share of a tree ensemble (split nodes
  that test it);
- ``size_share`` and ``nodes_share``: those as shares of the whole graph (all initializers and operator attributes;
  all operators but constants).

The graph is walked once in topological order, following for every tensor which input columns each of its columns
comes from (one-column reshapes, Concat and Gather along axis 1, embedding lookups, column-wise arithmetic). What
mixes features (hidden layers, a tree ensemble's leaves) is shared and counted for no feature, so the figures are
what removing the feature would at least save. A model set (one graph per segment) is not measured.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

# a tensor's provenance: ("cols", (set per column, ...)) for [N, C]; ("vec", set) for [N]; ("any", set) otherwise
Prov = tuple[str, Any]
_SAME_SHAPE = {
    "Cast", "CastLike", "Identity", "LabelEncoder", "Imputer", "Scaler", "Abs", "Neg", "Relu", "Sigmoid", "Tanh", "Exp",
    "Log", "Sqrt", "IsNaN", "IsInf", "Not", "Clip", "Floor", "Ceil", "Round", "Sign", "Reciprocal", "Binarizer",
}  # fmt: skip
_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Where", "Max", "Min", "Equal", "Less", "Greater", "And", "Or", "Mod"}
_TREES = {"TreeEnsembleRegressor", "TreeEnsembleClassifier", "TreeEnsemble"}
_SHAPE_ONLY = {"Shape", "Size"}  # read a tensor's shape, never its values
# ai.onnx.ml operators whose attributes hold one entry (or one per output) per input column
_COLUMN_ATTRIBUTES = {
    "Scaler": ("offset", "scale"),
    "Imputer": ("imputed_value_floats", "imputed_value_int64s"),
    "LinearRegressor": ("coefficients",),
    "LinearClassifier": ("coefficients",),
}


def feature_costs(model_file: str | Path, features: list[str]) -> dict[str, dict[str, float]]:
    """Each feature's footprint in the ONNX graph at ``model_file`` (see the module docstring).

    Returns:
        ``{feature: {"nodes", "nodes_share", "bytes", "size_share"}}`` for each of ``features`` that is a graph input.
    """
    import onnx

    graph = onnx.load(str(model_file)).graph
    walk = _Walk(graph)
    total_bytes = max(walk.total_bytes, 1)
    total_nodes = max(sum(1 for n in graph.node if n.op_type != "Constant"), 1)
    inputs = {i.name for i in graph.input}
    return {
        f: {
            "nodes": float(walk.nodes[f]),
            "nodes_share": walk.nodes[f] / total_nodes,
            "bytes": float(walk.bytes[f]),
            "size_share": walk.bytes[f] / total_bytes,
        }
        for f in features
        if f in inputs
    }


class _Walk:
    """One pass over a graph: provenance per tensor, bytes and operators attributed per feature."""

    def __init__(self, graph: Any) -> None:
        from onnx import numpy_helper

        self.bytes: dict[str, float] = defaultdict(float)
        self.nodes: dict[str, int] = defaultdict(int)
        self.const: dict[str, Any] = {}  # name -> value (initializers and Constant outputs)
        self.size: dict[str, float] = {}  # name -> bytes of a constant not yet attributed
        self.prov: dict[str, Prov] = {}
        for t in graph.initializer:
            self.const[t.name] = numpy_helper.to_array(t)
            self.size[t.name] = t.ByteSize()
        self.full = dict(self.size)  # a constant's bytes, and how many operators read it: one operator's share
        self.uses: dict[str, int] = defaultdict(int)
        for n in graph.node:
            for name in n.input:
                self.uses[name] += 1
        self.total_bytes = sum(self.size.values()) + sum(a.ByteSize() for n in graph.node for a in n.attribute)
        initialized = set(self.const)
        for i in graph.input:
            if i.name not in initialized:
                self.prov[i.name] = ("vec", frozenset([i.name]))
        for node in graph.node:
            self._node(node)

    # --- attribution ---------------------------------------------------------------------------------------------
    def _give(self, owners: frozenset[str], amount: float) -> None:
        for f in owners:
            self.bytes[f] += amount / len(owners)

    def _give_const(self, name: str, owners: frozenset[str]) -> None:
        """One operator's share of a constant (a constant several features' operators read is split among them)."""
        if owners and name in self.size:
            share = min(self.size[name], self.full[name] / max(self.uses[name], 1))
            self._give(owners, share)
            self.size[name] -= share
            if self.size[name] <= 0:
                del self.size[name]

    def _give_by_column(self, name: str, cols: tuple[frozenset[str], ...], axis: int) -> None:
        """A constant whose ``axis`` runs along ``cols`` (scaler constants, weight columns): each column's slice to
        its feature(s)."""
        value = self.const.get(name)
        if name not in self.size or value is None or value.ndim == 0 or value.shape[axis] != len(cols):
            return
        per_column = self.size.pop(name) / len(cols)
        for owners in cols:
            if owners:
                self._give(owners, per_column)

    # --- the walk ------------------------------------------------------------------------------------------------
    def _node(self, node: Any) -> None:
        from onnx import helper, numpy_helper

        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    self.const[node.output[0]] = numpy_helper.to_array(a.t)
                    self.size[node.output[0]] = self.full[node.output[0]] = a.ByteSize()
            return
        data = [n for n in node.input if n and n not in self.const]
        provs = [self.prov.get(n, ("any", frozenset())) for n in data]
        owners = frozenset().union(*(_owners(p) for p in provs))
        if node.op_type in _SHAPE_ONLY:
            owners, provs = frozenset(), []
        if len(owners) == 1:  # only this feature flows in: the operator and its constants are its own
            (f,) = owners
            self.nodes[f] += 1
            self.bytes[f] += sum(a.ByteSize() for a in node.attribute)
            for n in node.input:
                self._give_const(n, owners)
        out = self._structure(node, attrs, provs, owners)
        for name in node.output:
            if name:
                self.prov[name] = out

    def _structure(self, node: Any, attrs: dict[str, Any], provs: list[Prov], owners: frozenset[str]) -> Prov:
        """The output's provenance; attributes constants that run along columns on the way."""
        op, inputs = node.op_type, list(node.input)
        if not provs:
            return ("any", frozenset())
        first = self.prov.get(inputs[0])
        if op in _COLUMN_ATTRIBUTES and len(owners) > 1 and first is not None and first[0] == "cols":
            for a in node.attribute:
                if a.name in _COLUMN_ATTRIBUTES[op]:
                    for column in first[1]:
                        self._give(column, a.ByteSize() / len(first[1]))
        if op in _SAME_SHAPE and len(provs) == 1 and first is not None:
            return first
        if op in ("Unsqueeze", "Reshape") and first is not None and first[0] in ("vec", "cols"):
            target = attrs.get("axes", attrs.get("shape"))
            if target is None and len(inputs) > 1:
                target = self.const.get(inputs[1])
            flat = [int(v) for v in np.asarray(target).ravel()] if target is not None else []
            if first[0] == "vec" and (
                (op == "Unsqueeze" and flat in ([1], [-1])) or (op == "Reshape" and flat in ([-1, 1], [0, 1]))
            ):
                return ("cols", (first[1],))
            if first[0] == "cols" and op == "Reshape" and len(flat) == 2 and flat[0] in (-1, 0) and flat[1] == len(first[1]):
                return first  # [N, 1, C] -> [N, C], or a no-op: the columns stay
        # the column axis is the last one ([N, C], or [N, 1, C] as ai.onnx.ml encoders answer)
        if op == "Concat" and attrs.get("axis") in (1, 2, -1) and all(self.prov.get(n, ("", 0))[0] == "cols" for n in inputs):
            return ("cols", tuple(c for n in inputs for c in self.prov[n][1]))
        if op == "Gather":
            return self._gather(inputs, attrs.get("axis", 0), owners)
        if op in _ELEMENTWISE:
            cols = [p[1] for p in provs if p[0] == "cols"]
            constant_like = all(_owners(p) == frozenset() for p in provs if p[0] != "cols")  # e.g. Expand(mean, Shape)
            if cols and constant_like and all(len(c) == len(cols[0]) for c in cols):
                merged = tuple(frozenset().union(*parts) for parts in zip(*cols, strict=True))
                for n in inputs:
                    if n in self.const:
                        self._give_by_column(n, merged, -1)
                return ("cols", merged)
        if op in ("Gemm", "MatMul") and first is not None and first[0] == "cols" and len(inputs) > 1:
            weight_axis = (1 if attrs.get("transB", 0) else 0) if op == "Gemm" else 0
            self._give_by_column(inputs[1], first[1], weight_axis)
        if op in _TREES and first is not None and first[0] == "cols":
            self._trees(node, attrs, first[1])
        if op == "OneHotEncoder" and first is not None and (first[0] == "vec" or (first[0] == "cols" and len(first[1]) == 1)):
            width = len(attrs.get("cats_strings", attrs.get("cats_int64s", [])))
            return ("cols", (_owners(first),) * width)
        return ("any", owners)

    def _gather(self, inputs: list[str], axis: int, owners: frozenset[str]) -> Prov:
        data, index = (inputs + [""])[:2]
        source = self.prov.get(data)
        if source is not None and source[0] == "cols" and axis in (1, -1) and index in self.const:
            picked = np.asarray(self.const[index])
            if picked.ndim == 0:
                return ("vec", source[1][int(picked)])
            return ("cols", tuple(source[1][int(i)] for i in picked.ravel()))
        looked_up = self.prov.get(index)
        per_value = looked_up is not None and (looked_up[0] == "vec" or (looked_up[0] == "cols" and len(looked_up[1]) == 1))
        if data in self.const and axis == 0 and owners and per_value:  # an embedding: a table row per value of a feature
            table = self.const[data]
            self._give_const(data, owners)
            width = int(table.shape[1]) if np.ndim(table) == 2 else 1
            return ("cols", (owners,) * width)
        return ("any", owners)

    def _trees(self, node: Any, attrs: dict[str, Any], cols: tuple[frozenset[str], ...]) -> None:
        """A tree ensemble's attributes shared by the features its split nodes test (leaves count for none)."""
        ids = list(attrs.get("nodes_featureids", []))
        modes = [m.decode() if isinstance(m, bytes) else str(m) for m in attrs.get("nodes_modes", [])]
        splits = [i for i, m in zip(ids, modes, strict=False) if m != "LEAF" and 0 <= int(i) < len(cols)]
        if not splits:
            return
        size = sum(a.ByteSize() for a in node.attribute)
        per_split = size / len(ids)  # every node (leaves too) takes its slot in the attribute arrays
        for i in splits:
            if cols[int(i)]:
                self._give(cols[int(i)], per_split)


def _owners(p: Prov) -> frozenset[str]:
    if p[0] == "cols":
        return frozenset().union(*p[1])
    return frozenset(p[1])

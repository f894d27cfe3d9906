"""torch modules, exported with ``torch.onnx``.

The module takes one float32 tensor ``[N, F]`` of the feature columns (``features``, default: the sample's columns but
the target) and answers ``[N]`` or ``[N, 1]`` (a regression value, or with ``task="binary"`` the probability of class
1), or ``[N, K]`` probabilities (a classifier: end the module with a Softmax).
"""

from __future__ import annotations

import io
import warnings
from typing import Any

from rayml.errors import UnsupportedModelError
from rayml.models.importers._onnx import from_onnx, load_onnx
from rayml.models.importers._source import Request, SourceGraph, matrix_features

OPSET = 17
_ONNX_HINT = "export the module to ONNX yourself (torch.onnx.export) and register the file (--onnx)"


def from_torch(module: Any, req: Request) -> SourceGraph:
    """Export a ``torch.nn.Module`` and take it as an ONNX model whose answers are the module's own.

    Raises:
        UnsupportedModelError: the module fails on the sample's feature matrix, or ``torch.onnx.export`` fails.
    """
    import numpy as np
    import torch

    what = f"torch {type(module).__name__}"
    features = matrix_features(req, None, None, what)
    x = torch.from_numpy(req.sample[features].to_numpy(dtype=np.float32, copy=True))
    module = module.eval()
    try:
        with torch.no_grad():
            out = module(x)
    except Exception as e:
        raise UnsupportedModelError(
            f"the {what} module failed on the sample's {len(features)} feature column(s) as one float32 tensor "
            f"[N, {len(features)}]: {e}",
            hint="rayml feeds the module one float32 matrix of the feature columns (features=[...] sets which); " + _ONNX_HINT,
        ) from e
    if not isinstance(out, torch.Tensor) or out.ndim not in (1, 2) or out.shape[0] != len(x):
        raise UnsupportedModelError(
            f"the {what} module answers {type(out).__name__}"
            + (f" of shape {list(out.shape)}" if isinstance(out, torch.Tensor) else "")
            + "; rayml takes one tensor [N], [N, 1] (a value or a probability) or [N, K] (probabilities)",
            hint="wrap the module so that forward returns one such tensor",
        )
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (x[:2],),
                buf,  # type: ignore[arg-type]  # torch annotates str | PathLike; the TorchScript exporter writes to a file object
                input_names=["X"],
                output_names=["y"],
                dynamic_axes={"X": {0: "N"}, "y": {0: "N"}},
                opset_version=OPSET,
                dynamo=False,
            )
    except Exception as e:
        raise UnsupportedModelError(f"torch.onnx.export cannot export the {what} module: {e}", hint=_ONNX_HINT) from e
    found = from_onnx(
        load_onnx(buf.getvalue()),
        Request(req.sample, req.target, req.task, tuple(features), req.class_labels, req.tracking_uri),
        source={
            "framework": "torch",
            "framework_version": torch.__version__,
            "converter": "torch.onnx",
            "converter_version": torch.__version__,
        },
        what=what,
    )
    # what torch itself answers, not what the exported graph does: parity compares the two
    found.expected_values = out.detach().cpu().numpy()
    return found

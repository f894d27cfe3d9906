"""Your own torch network inside rayml's model: ``model.factory: "package.module:function"``.

The function receives a :class:`FeatureSchema` (plus ``model.factory_kwargs`` as keyword arguments) and returns an
``nn.Module``, the *body*. rayml wraps it in :class:`rayml.models.mlp.TabularMLP`, which keeps the preprocessing in
front of it and the output head after it, so training (Ray Train, DDP, AMP, checkpoints, Tune), the ONNX export with
its parity check and the registry treat it exactly like rayml's own MLP. The body's contract::

    forward(numeric: FloatTensor [N, n_numeric],      # standardised, NaN already replaced by the training mean
            categorical: LongTensor [N, n_categorical]) # 0 = unknown or missing, 1..cardinality-1 = known categories
        -> raw outputs: regression [N] or [N, 1] (the standardised target); binary [N] or [N, 1] (a logit);
           multiclass [N, K] (logits, one per class)

rayml turns raw outputs into predictions (de-standardise / sigmoid / softmax) and trains on them with MSE, BCE-with-
logits or cross-entropy. The module must be importable where the model is built: on the driver (the current directory
is searched too, as ``python -m`` does) and on the Ray Train workers, which get the driver's import path for it
(:func:`import_path` -> :func:`extend_import_path`); a Ray job ships it with ``--working-dir``.

Example (``my_nets.py``, then ``model.factory: "my_nets:small_net"``)::

    def small_net(schema: FeatureSchema, width: int = 32) -> nn.Module:
        return MyNet(schema.n_numeric, schema.cardinalities, width, schema.n_outputs)
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from rayml.config.train import FACTORY_FORMAT, split_factory_ref
from rayml.errors import ConfigError

if TYPE_CHECKING:  # mlp.py builds bodies with this module
    from rayml.models.mlp import ModelSpec

FRAMEWORK_MLP = "rayml-mlp"
FRAMEWORK_FACTORY = "torch-factory"
_BODY_CONTRACT = (
    "forward(numeric [N, n_numeric] float, categorical [N, n_categorical] long) returning raw outputs: [N] or [N, 1] "
    "for regression and binary, [N, K] logits for multiclass"
)


@dataclass(frozen=True)
class FeatureSchema:
    """What a factory's network is built for: the columns it receives and the outputs it must return.

    Attributes:
        numeric: numeric column names, in the order of ``forward``'s ``numeric`` columns.
        categorical: categorical column names, in the order of ``forward``'s ``categorical`` columns.
        cardinalities: per categorical column, the number of indices it takes, the unknown slot 0 included (an
            ``nn.Embedding(cardinality, dim)`` fits).
        task: ``regression``, ``binary`` or ``multiclass``.
        n_classes: the number of classes (multiclass K, binary 2, regression 0).
        n_outputs: the width of the raw output: 1 for regression and binary, K for multiclass.
    """

    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    cardinalities: tuple[int, ...]
    task: str
    n_classes: int
    n_outputs: int

    @property
    def n_numeric(self) -> int:
        return len(self.numeric)

    @property
    def n_categorical(self) -> int:
        return len(self.categorical)

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> FeatureSchema:
        n_classes = {"regression": 0, "binary": 2}.get(spec.task, spec.n_outputs)
        return cls(
            numeric=tuple(spec.numeric),
            categorical=tuple(spec.categorical),
            cardinalities=tuple(len(cats) + 1 for cats in spec.categories),
            task=spec.task,
            n_classes=n_classes,
            n_outputs=spec.n_outputs,
        )


def load_factory(ref: str) -> Callable[..., Any]:
    """Import the callable that ``ref`` names (``"package.module:function"``).

    The current directory is searched after ``sys.path``, so ``rayml train`` run next to ``my_nets.py`` finds it.

    Raises:
        ConfigError: ``ref`` is malformed, its module cannot be imported, the attribute is missing or not callable.
    """
    try:
        module_name, attr = split_factory_ref(ref)
    except ValueError as e:
        raise ConfigError(str(e), hint=f"set model.factory to {FACTORY_FORMAT!r}, or null for rayml's MLP") from e
    module = _import(module_name, ref)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n)))
            raise ConfigError(
                f"model.factory {ref!r}: module {module_name!r} ({getattr(module, '__file__', '?')}) has no {attr!r}",
                hint=f"callables it defines: {', '.join(public[:20]) or 'none'}",
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(
            f"model.factory {ref!r} is a {type(obj).__name__}, not a callable",
            hint="name a function (or class) that takes the FeatureSchema and returns an nn.Module",
        )
    return obj  # type: ignore[no-any-return]  # callable() narrowed it to Callable[..., object]


def _import(module_name: str, ref: str) -> Any:
    """``importlib.import_module``, retried with the current directory on the path; errors say what to fix."""
    if module_name in sys.modules:  # imported already (the driver loads the factory several times)
        return sys.modules[module_name]
    try:
        cwd = os.getcwd()
    except OSError:  # the current directory is gone (e.g. a Ray job's working dir cleaned up under the driver)
        cwd = ""
    try:
        try:
            return importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if not _is_the_module(e, module_name) or not cwd or cwd in sys.path:
                raise
            sys.path.append(cwd)  # searched last, as `python -m` searches it first: nothing installed is shadowed
            return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if _is_the_module(e, module_name):
            raise ConfigError(
                f"model.factory {ref!r}: module {module_name!r} is not importable (searched sys.path and {cwd})",
                hint="run from the directory that holds the module, add its directory to PYTHONPATH, or for a Ray job "
                "ship it with `ray job submit --working-dir .` (or runtime_env py_modules)",
            ) from e
        raise ConfigError(
            f"model.factory {ref!r}: importing {module_name!r} failed: {e}",
            hint=f"install {e.name!r} where rayml runs (and in the Ray job's runtime_env: pip)",
        ) from e
    except Exception as e:  # the user's module raised while importing
        raise ConfigError(
            f"model.factory {ref!r}: importing {module_name!r} raised {type(e).__name__}: {e}",
            hint=f"fix the module so that `python -c 'import {module_name}'` works",
        ) from e


def _is_the_module(e: ModuleNotFoundError, module_name: str) -> bool:
    """Whether ``e`` says ``module_name`` (or a package above it) is missing, not something it imports."""
    missing = e.name or ""
    return module_name == missing or module_name.startswith(missing + ".")


def import_path(ref: str) -> list[str]:
    """The directories the module of ``ref`` was imported from (the ``sys.path`` entries that hold its top package).

    The driver passes these to the Ray Train workers (:func:`extend_import_path`), whose own ``sys.path`` lacks
    entries the driver added (the current directory of ``rayml train``, a test's tmp dir).
    """
    load_factory(ref)
    top = sys.modules[split_factory_ref(ref)[0].split(".")[0]]
    file = getattr(top, "__file__", None)
    if file and os.path.basename(file) == "__init__.py":
        dirs = [os.path.dirname(os.path.dirname(file))]
    elif file:
        dirs = [os.path.dirname(file)]
    else:  # a namespace package: every folder it spans
        dirs = [os.path.dirname(p) for p in getattr(top, "__path__", [])]
    return list(dict.fromkeys(os.path.abspath(d) for d in dirs))


def source_digest(ref: str) -> str:
    """12 hex digits of the SHA-256 of the factory module's file (empty when it has none): names a training run
    after the network's code as well as its config."""
    load_factory(ref)
    file = getattr(sys.modules[split_factory_ref(ref)[0]], "__file__", None)
    if not file:
        return ""
    with open(file, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:12]


def extend_import_path(dirs: Sequence[str]) -> None:
    """Append ``dirs`` (from :func:`import_path` on the driver) to ``sys.path``: appended, so nothing the worker
    already imports is shadowed; folders that do not exist on this node are skipped (a ``--working-dir`` job puts
    the module on the workers' path itself)."""
    for d in dirs:
        if d not in sys.path and os.path.isdir(d):
            sys.path.append(d)


def build_body(spec: ModelSpec) -> nn.Module:
    """Call ``spec.factory`` with the spec's :class:`FeatureSchema` and ``factory_kwargs``, and check what it returns.

    The result is dry-run on two rows (all-unknown categories, then the largest index of each) in eval mode without
    gradients, so a network that fails on rayml's inputs, or returns the wrong shape, fails here, on the driver,
    before any worker starts.

    Raises:
        ConfigError: the factory cannot be loaded, raises, returns something other than an ``nn.Module``, or the
            module's output does not fit the task.
    """
    ref = spec.factory or ""
    factory = load_factory(ref)
    schema = FeatureSchema.from_spec(spec)
    try:
        body = factory(schema, **spec.factory_kwargs)
    except Exception as e:
        raise ConfigError(
            f"model.factory {ref!r} raised {type(e).__name__}: {e} (called with the schema and "
            f"factory_kwargs={spec.factory_kwargs})",
            hint="check model.factory_kwargs against the function's parameters",
        ) from e
    if not isinstance(body, nn.Module):
        raise ConfigError(
            f"model.factory {ref!r} returned a {type(body).__name__}, not a torch.nn.Module",
            hint=f"return an nn.Module whose {_BODY_CONTRACT}",
        )
    _dry_run(body, schema, ref)
    return body


def _dry_run(body: nn.Module, schema: FeatureSchema, ref: str) -> None:
    numeric = torch.zeros((2, schema.n_numeric), dtype=torch.float32)
    categorical = torch.tensor([[0] * schema.n_categorical, [c - 1 for c in schema.cardinalities]], dtype=torch.int64)
    categorical = categorical.reshape(2, schema.n_categorical)
    was_training = body.training
    body.eval()
    try:
        with torch.no_grad():
            out = body(numeric, categorical)
    except Exception as e:
        raise ConfigError(
            f"model.factory {ref!r}: the network failed on a 2-row dry run (numeric [2, {schema.n_numeric}], "
            f"categorical [2, {schema.n_categorical}] with indices up to cardinality - 1): {type(e).__name__}: {e}",
            hint=f"the module's {_BODY_CONTRACT}; size embeddings with schema.cardinalities (the unknown slot 0 included)",
        ) from e
    finally:
        body.train(was_training)
    expected = "[N] or [N, 1]" if schema.n_outputs == 1 else f"[N, {schema.n_outputs}]"
    shape = list(out.shape) if isinstance(out, torch.Tensor) else None
    fits = shape in ([2], [2, 1]) if schema.n_outputs == 1 else shape == [2, schema.n_outputs]
    if shape is None or not out.is_floating_point() or not fits:
        got = f"shape {shape}, dtype {out.dtype}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        raise ConfigError(
            f"model.factory {ref!r}: for 2 rows the network returned {got}; a {schema.task} network returns a float "
            f"tensor of shape {expected}",
            hint="return raw outputs (no sigmoid/softmax: rayml adds the output head): "
            + ("the standardised target or a logit per row" if schema.n_outputs == 1 else "one logit per class"),
        )


def body_output(out: torch.Tensor, n_outputs: int) -> torch.Tensor:
    """A body's raw output in the shape rayml trains on: [N] for one output (a [N, 1] is squeezed), else [N, K]."""
    return out.squeeze(1) if n_outputs == 1 and out.dim() == 2 else out


def model_source(spec: ModelSpec) -> dict[str, Any]:
    """The ``source`` metadata of a trained model: which network made it, with the versions that matter."""
    if spec.factory:
        return {
            "framework": FRAMEWORK_FACTORY,
            "factory": spec.factory,
            "factory_kwargs": dict(spec.factory_kwargs),
            "torch": torch.__version__,
        }
    return {"framework": FRAMEWORK_MLP, "torch": torch.__version__}

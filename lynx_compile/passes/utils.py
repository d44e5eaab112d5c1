"""What the lynx passes share: the per-linear record they fill in, and helpers to read Dynamo's FX graphs."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx

from ..config import LynxConfig
from ..folds import FoldMatch
from ..folds.base import fake_value  # noqa: F401  (the passes read fake values through here)
from ..plan import SparseLinearPlan


@dataclass
class LinearSite:
    """One weight linear found in the graph: y = x·Wᵀ (+ b), whatever FX form it had."""

    node: torch.fx.Node  # the node computing y
    x: torch.fx.Node
    weight: torch.fx.Node  # the parameter itself (placeholder or get_attr), never its transpose
    bias: torch.fx.Node | None
    form: str  # "linear" | "matmul" | "addmm": the source form, for the report
    name: str  # module qualified name ("transformer_blocks.3.ff.net.2"); a non-"weight" parameter adds its own
    tokens: Any  # M: int, or a SymInt when Dynamo made the token count dynamic
    in_features: int  # K
    out_features: int  # N
    dtype: torch.dtype  # what it computes in: the operands' dtype, or under autocast the autocast dtype
    device: torch.device
    autocast: torch.dtype | None = None  # the autocast dtype in force for the device (the op then casts as F.linear)
    decision: str = "undecided"  # "sparse" | "dense"
    reason: str = ""
    plan: SparseLinearPlan | None = None  # how a sparse decision runs: path, its settings, method, fold
    lora: Any = None  # the policy's LoraAdapter for a sparse layer that runs a correction
    fold: FoldMatch | None = None  # x's producer the sparse op absorbs (`lynx_compile.folds`); None keeps x as it is

    @property
    def opaque(self) -> bool:
        """A sparse layer whose op cannot be lowered into its parts: its symbolic token count may fall below
        min_tokens (or off the path's multiple), so the op decides at run time and runs eagerly."""
        return self.plan is not None and not self.plan.settled(self.tokens)

    @property
    def lora_rank(self) -> int:
        return 0 if self.lora is None else self.lora.rank

    @property
    def flops(self) -> int:
        return 2 * concrete_int(self.tokens) * self.in_features * self.out_features


@dataclass
class PassContext:
    """State handed from pass to pass for one graph."""

    config: LynxConfig
    sites: list[LinearSite] = field(default_factory=list)
    rewrites: int = 0


def concrete_int(value: Any) -> int:
    """An int for a size: itself, or a SymInt's example hint."""
    if isinstance(value, torch.SymInt):
        return int(value.node.hint) if value.node.has_hint() else 0
    return int(value)


# How Dynamo names the module that torch.compile was given: L['self'] in torch 2.13, L['fn'] in torch 2.11.
_COMPILED_MODULE_ROOTS = ("self", "fn")
_ROOT = re.compile(r"[LG]\['([^']*)'\]")
_KEY = re.compile(r"\.(\w+)|\['([^']*)'\]|\[(\d+)\]")


def linear_name(weight: torch.fx.Node, gm: torch.fx.GraphModule) -> str | None:
    """Name of the linear whose weight `weight` is; None when it is not a module parameter.

    The owning module's qualified name for the usual ``<module>.weight`` (``transformer_blocks.3.ff.net.2``), the
    parameter's own qualified name otherwise (``blocks.0.w_qkv``). Dynamo lifts parameters to placeholders whose
    source reads like ``L['self']._modules['blocks']._modules['0']._parameters['weight']``; FX-traced graphs keep
    them as get_attr.
    """
    path = _parameter_path(weight, gm)
    if path is None:
        return None
    owner, _, parameter = path.rpartition(".")
    return owner if parameter == "weight" and owner else path


def _parameter_path(node: torch.fx.Node, gm: torch.fx.GraphModule) -> str | None:
    if node.op == "get_attr":
        return str(node.target) if isinstance(_resolve(gm, str(node.target)), torch.nn.Parameter) else None
    if node.op != "placeholder":
        return None
    graph_arg = node.meta.get("grapharg")
    source = getattr(graph_arg, "source", None)
    if source is None or not isinstance(getattr(graph_arg, "example", None), torch.nn.Parameter):
        return None
    source_name = source.name() if callable(source.name) else source.name
    root = _ROOT.match(source_name)
    if root is None or "_parameters" not in source_name:
        return None
    # Dynamo spells the path as ._modules['a'], .__dict__['_modules']['a'] or .a depending on version and on
    # how the module was reached; a key after `_modules`/`_parameters` and a plain attribute are path elements.
    keys = [next(g for g in match.groups() if g is not None) for match in _KEY.finditer(source_name, root.end())]
    path = [key for key in keys if key not in ("__dict__", "_modules", "_parameters")]
    if root.group(1) not in _COMPILED_MODULE_ROOTS:  # reached through a global or another local: keep its name
        path.insert(0, root.group(1))
    return ".".join(path)


def _resolve(root: torch.nn.Module, target: str) -> Any:
    value: Any = root
    for part in target.split("."):
        value = getattr(value, part, None)
    return value

"""What the lynx passes share: the per-linear record they fill in, and helpers to read Dynamo's FX graphs."""

from __future__ import annotations

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
    float8: bool = False  # the weight is a torchao float8 tensor (`lynx_compile.float8`): float8 paths only
    decision: str = "undecided"  # "sparse" | "dense"
    reason: str = ""
    plan: SparseLinearPlan | None = None  # how a sparse decision runs: path, its settings, method, fold
    lora: Any = None  # the policy's LoraAdapter for a sparse layer that runs a correction
    fold: FoldMatch | None = None  # x's producer the sparse op absorbs (`lynx_compile.folds`); None keeps x as it is
    group: Any = None  # the SiblingGroup (`group_siblings`) it runs in, when decided sparse with its siblings
    name_problem: str | None = None  # why `name` is only a label: dense where options select layers by name
    weight_view: str | None = None  # the operations that make the weight of its parameter (`weight`): stays dense
    weights_only: bool = False  # x is made of parameters and constants alone (a weight computation): stays dense
    weight_name: Any = field(default=None, repr=False)  # `names.ParameterName`: the weight, named relative to its root
    # Under regional compilation: the layer's full name in every module instance the graph serves, in model order
    # (`name` is the one in the instance traced), and the reason for each; empty: `name` alone.
    instances: tuple[str, ...] = ()
    placement: Any = None  # the `regions.Placement` that gave `instances` (a graph rooted at a block)
    instance_reasons: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        """The full names of the layer this site runs: one per instance the graph serves."""
        return self.instances or (self.name,)

    @property
    def reasons(self) -> tuple[str, ...]:
        return self.instance_reasons or (self.reason,) * len(self.names)

    @property
    def opaque(self) -> bool:
        """A sparse layer whose op cannot be lowered into its parts: nothing proves its symbolic token count is one
        the plan runs sparse (off the path's `row_multiple`), so the op decides at run time and runs eagerly."""
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
    placement: Any = None  # `regions.Placement` of a graph rooted at a block: the instances it serves
    # Sibling groups whose weights to pack in one buffer once the graph is compiled (`group_siblings.pack_group`):
    # not before, as the compiler's fake tensors of the parameters would no longer match them.
    groups_to_pack: list = field(default_factory=list)
    graph_text: tuple[str, str] = ("", "")  # the graph before and after the passes, for the report


def concrete_int(value: Any) -> int:
    """An int for a size: itself, or a SymInt's example hint."""
    if isinstance(value, torch.SymInt):
        return int(value.node.hint) if value.node.has_hint() else 0
    return int(value)


def attribute_node(graph: torch.fx.Graph, tensor: torch.fx.Node, name: str) -> torch.fx.Node:
    """`getattr(tensor, name)` at the graph's insertion point: an inner tensor of a tensor subclass (torchao's
    float8 weight: ``qdata``, ``scale``), which AOT traces as the plain tensor it is."""
    node = graph.call_function(getattr, (tensor, name))
    node.meta["example_value"] = getattr(fake_value(tensor), name)
    return node

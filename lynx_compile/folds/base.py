"""What a producer fold is: a producer of a sparsified linear's input x that `lynx::sparse_linear` absorbs, so that
the compressor makes x as it loads the producer's inputs and x is never written.

A fold kind (`ProducerFold`) brings everything about its producer, in one module:
- `match`: its FX matcher on Dynamo's graph — which nodes produce x, and what the op takes instead (its inputs);
- `reference`: x from those inputs in plain torch (the simulate path and every fallback run it);
- `vjp`: the gradient of x back to the inputs (the op's straight-through backward);
- `loader`: what the compressor applies on load (a Triton function, `kernels.prune_compress_24.Loader`);
- `width`, `check`, `describe`: the K of x, the inputs it accepts, a name for reasons and reports.
A fold is named in graphs and plans by its `FoldSpec` (kind + parameters), e.g. ``concat(none,gelu_tanh)``.
"""

from __future__ import annotations

import functools
import inspect
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Sequence

import torch
import torch.fx

from ..kernels.prune_compress_24 import Loader

_SPEC = re.compile(r"^(\w+)\(([\w,]*)\)$")


@dataclass(frozen=True)
class FoldSpec:
    """A fold kind and its parameters (names or ints), as the op and the plan carry it."""

    kind: str = "identity"
    params: tuple[str, ...] = ()

    def encode(self) -> str:
        return f"{self.kind}({','.join(self.params)})"

    @staticmethod
    @functools.lru_cache(maxsize=1024)  # the ops decode their spec on every call: host time on the hot path
    def decode(text: str) -> FoldSpec:
        match = _SPEC.match(text)
        if match is None:
            raise ValueError(f"not a fold spec: {text!r} (expected kind(param,...))")
        kind, params = match.groups()
        return FoldSpec(kind, tuple(params.split(",")) if params else ())


IDENTITY = FoldSpec()


@dataclass(eq=False)
class Derived:
    """A fold input the graph does not hold yet (a norm's row statistics): `build(graph, replaced)` inserts the nodes
    computing it at the graph's insertion point, once the layer is rewritten, so that Inductor computes it — fused
    with whatever produces what it reads. It reads nodes through `replaced` (the rewrite's map of nodes it has
    replaced): what it reads may be a linear rewritten, and erased, before it (a norm straight after a sparse
    linear: Chroma's guidance MLP, PRX's input projection). `value` is its fake tensor, for shapes and dtypes
    before that."""

    value: torch.Tensor
    build: Callable[[torch.fx.Graph, dict], torch.fx.Node]


@dataclass
class FoldMatch:
    """What a fold's matcher found: the op takes `inputs` instead of x; `absorbed` are the producer nodes the rewrite
    may then erase (consumers first, each erased only once it has no users left). `typed`: how many leading inputs
    carry x's dtype (None: all), the ones an autocast cast of x would have to reach."""

    spec: FoldSpec
    inputs: list[torch.fx.Node | Derived]
    absorbed: list[torch.fx.Node] = field(default_factory=list)
    typed: int | None = None

    def values(self) -> list[torch.Tensor]:
        """The inputs' fake tensors."""
        return [item.value if isinstance(item, Derived) else fake_value(item) for item in self.inputs]

    def materialize(self, graph: torch.fx.Graph, replaced: dict | None = None) -> list[torch.fx.Node]:
        """The inputs as nodes, derived ones inserted at the graph's insertion point; `replaced` maps nodes the
        rewrite has replaced to their replacements."""
        replaced = replaced or {}
        return [item.build(graph, replaced) if isinstance(item, Derived) else replaced.get(item, item)
                for item in self.inputs]  # fmt: skip


class ProducerFold(ABC):
    """One kind of producer the sparse op can absorb. Subclasses live one a module and register in `folds`."""

    kind: ClassVar[str]

    @abstractmethod
    def match(self, x: torch.fx.Node) -> FoldMatch | None:
        """The fold of x's producer, if x is one this kind absorbs and the linear is its one user."""

    @abstractmethod
    def reference(self, inputs: Sequence[torch.Tensor], params: tuple[str, ...]) -> torch.Tensor:
        """x, from the op's inputs, in torch."""

    @abstractmethod
    def vjp(self, grad_x: torch.Tensor, inputs: Sequence[torch.Tensor], params: tuple[str, ...]) -> list:
        """The gradient of `reference` with respect to each input, given the gradient of x."""

    @abstractmethod
    def loader(self, inputs: Sequence[torch.Tensor], params: tuple[str, ...]) -> Loader:
        """How the compressor makes x from the (2-D) inputs as it loads them."""

    @abstractmethod
    def width(self, inputs: Sequence[torch.Tensor], params: tuple[str, ...]) -> int:
        """K, the last dimension of x (fake tensors welcome)."""

    def check(self, inputs: Sequence[torch.Tensor], params: tuple[str, ...]) -> None:
        """Raise ValueError for inputs or parameters this fold cannot take."""

    def describe(self, params: tuple[str, ...]) -> str:
        return FoldSpec(self.kind, params).encode()

    # Whether the speed rule also times the producer written out first (`Workload.written`) and keeps the faster:
    # a fold whose work on load can cost the compressor more than x's round trip saves.
    measured_both_ways: ClassVar[bool] = False

    def source_files(self) -> tuple[str, ...]:
        """Files whose content decides what this fold emits (for Inductor's FX graph cache key)."""
        return (inspect.getfile(type(self)),)


# ---- helpers for matchers ------------------------------------------------------------------------------------------

_DROPOUT_FUNCTIONS = {torch.nn.functional.dropout, torch.dropout}


def through_identities(node: torch.fx.Node) -> tuple[list[torch.fx.Node], torch.fx.Node]:
    """(the one-user inference-time dropouts in front of node, outermost first; what they pass through).

    Dynamo keeps an eval-mode dropout (`training=False`) in the graph — diffusers' FeedForward has one between its
    GELU and its down-projection — so a matcher looks through it, and the rewrite erases it with the producer."""
    skipped = []
    while node.op == "call_function" and node.target in _DROPOUT_FUNCTIONS and len(node.users) == 1:
        training = node.args[2] if len(node.args) > 2 else node.kwargs.get("training", node.kwargs.get("train", True))
        source = node.args[0] if node.args else node.kwargs.get("input")
        if training is not False or not isinstance(source, torch.fx.Node):
            break
        skipped.append(node)
        node = source
    return skipped, node


def fake_value(node: object) -> object:
    """The fake tensor (or SymInt) Dynamo or AOT recorded for a node; None for constants and unknowns."""
    if not isinstance(node, torch.fx.Node):
        return None
    return node.meta.get("example_value", node.meta.get("val"))


def argument(node: torch.fx.Node, index: int, name: str, default: object = None) -> object:
    """A call's argument, given positionally or by keyword."""
    return node.args[index] if len(node.args) > index else node.kwargs.get(name, default)

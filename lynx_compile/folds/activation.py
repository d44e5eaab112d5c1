"""A pointwise activation producing x: the MLP down-projection's input, GELU(up-projection), in most DiTs (SiLU too).

Unfolded, one kernel reads the up-projection's output and writes x = GELU(·) densely, only for the compressor to read
x back: at K = 12288 that round trip is a fifth of the sparsified layer's time (benchmarks/RESULTS.md). Folded, the
op takes the GELU's input and the compressor applies the GELU on load (`kernels/activations.py`).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.fx

from ..kernels.activations import ACTIVATIONS, GELU_APPROXIMATE, activation_ref, activation_vjp, check_activation
from ..kernels.prune_compress_24 import Loader
from .base import FoldMatch, FoldSpec, ProducerFold, argument, through_identities

try:
    import triton
    import triton.language as tl

    from ..kernels.activations import apply_activation
    from ..kernels.prune_compress_24 import load_tile
except ImportError:
    triton = None

_GELU_FUNCTIONS = {torch._C._nn.gelu, torch.nn.functional.gelu}
_SILU_FUNCTIONS = {torch.nn.functional.silu, torch._C._nn.silu}
_GELU_NAMES = {approximate: name for name, approximate in GELU_APPROXIMATE.items()}  # F.gelu's approximate → name


def activation_input(node: torch.fx.Node) -> tuple[torch.fx.Node, str] | None:
    """(the activation's input, its name) for a one-user activation node the compressor can apply; else None."""
    if node.op != "call_function" or len(node.users) != 1:
        return None
    source = argument(node, 0, "input")
    if not isinstance(source, torch.fx.Node):
        return None
    if node.target in _SILU_FUNCTIONS and argument(node, 1, "inplace", False) is False:
        return source, "silu"
    approximate = argument(node, 1, "approximate", "none")
    if node.target in _GELU_FUNCTIONS and approximate in _GELU_NAMES:
        return source, _GELU_NAMES[approximate]
    return None


if triton is not None:

    @triton.jit
    def _load_activated(operands, strides, scalars, rows, start, M, ARGS: tl.constexpr, WIDTH: tl.constexpr):
        x = load_tile(operands[0], strides[0], strides[1], rows, start, M, WIDTH)
        return apply_activation(x, ARGS[0])

else:
    _load_activated = None


class Activation(ProducerFold):
    """x = act(t), params (act,): an activation of `kernels.activations.ACTIVATIONS` other than "none"."""

    kind = "activation"

    def match(self, x: torch.fx.Node) -> FoldMatch | None:
        skipped, produced = through_identities(x)
        found = activation_input(produced)
        if found is None:
            return None
        source, name = found
        return FoldMatch(FoldSpec(self.kind, (name,)), [source], [*skipped, produced])

    def reference(self, inputs: Sequence[torch.Tensor], params: tuple[str, ...]) -> torch.Tensor:
        return activation_ref(inputs[0], params[0])

    def vjp(self, grad_x: torch.Tensor, inputs: Sequence[torch.Tensor], params: tuple[str, ...]) -> list:
        return [activation_vjp(grad_x, inputs[0], params[0])]

    def loader(self, inputs: Sequence[torch.Tensor], params: tuple[str, ...]) -> Loader:
        return Loader(_load_activated, inputs[0].shape[-1], args=(ACTIVATIONS[params[0]],),
                      pieces=(ACTIVATIONS[params[0]],))

    def width(self, inputs: Sequence[torch.Tensor], params: tuple[str, ...]) -> int:
        return inputs[0].shape[-1]

    def check(self, inputs: Sequence[torch.Tensor], params: tuple[str, ...]) -> None:
        if len(inputs) != 1 or len(params) != 1:
            raise ValueError(f"activation takes one input and one name, got {len(inputs)} and {params}")
        check_activation(params[0])

    def describe(self, params: tuple[str, ...]) -> str:
        return params[0]

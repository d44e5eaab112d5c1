"""A gated activation producing x: the down-projection's input in SwiGLU / GEGLU feed-forwards, act(a) · b.

Z-Image, Lumina2, HunyuanVideo, LTX and other DiTs compute `w2(silu(w1(x)) * w3(x))` (or split one projection in
two: `h, gate = proj(x).chunk(2, -1); h * gelu(gate)`). Unfolded, a kernel reads a and b and writes x densely for
the compressor to read back; folded, the op takes a and b (chunk views welcome: the loader follows their strides)
and the compressor applies act(a) · b on load. Numerics are eager torch's: act(a) rounded to the dtype, then the
product rounded.
"""

from __future__ import annotations

import operator
from typing import Sequence

import torch
import torch.fx

from ..kernels.activations import ACTIVATIONS, activation_ref, activation_vjp, check_activation
from ..kernels.prune_compress_24 import Loader
from .activation import activation_input
from .base import FoldMatch, FoldSpec, ProducerFold, fake_value, through_identities

try:
    import triton
    import triton.language as tl

    from ..kernels.activations import apply_activation
    from ..kernels.prune_compress_24 import load_tile
except ImportError:
    triton = None

_MUL_FUNCTIONS = {operator.mul, torch.mul}


if triton is not None:

    @triton.jit
    def _load_gated(operands, strides, scalars, rows, start, M, ARGS: tl.constexpr, WIDTH: tl.constexpr):
        gate = apply_activation(load_tile(operands[0], strides[0], strides[1], rows, start, M, WIDTH), ARGS[0])
        value = load_tile(operands[1], strides[2], strides[3], rows, start, M, WIDTH)
        return (gate.to(tl.float32) * value.to(tl.float32)).to(gate.dtype)

else:
    _load_gated = None


class Gated(ProducerFold):
    """x = act(a) · b, params (act,), inputs [a, b]."""

    kind = "gated"

    def match(self, x: torch.fx.Node) -> FoldMatch | None:
        skipped, product = through_identities(x)
        if product.op != "call_function" or product.target not in _MUL_FUNCTIONS or len(product.users) != 1:
            return None
        if len(product.args) != 2 or product.kwargs or not all(isinstance(a, torch.fx.Node) for a in product.args):
            return None
        for gate, value in (product.args, product.args[::-1]):
            found = activation_input(gate)
            if found is not None and _same_shape(found[0], value, product):
                return FoldMatch(FoldSpec(self.kind, (found[1],)), [found[0], value], [*skipped, product, gate])
        return None

    def reference(self, inputs: Sequence[torch.Tensor], params: tuple[str, ...]) -> torch.Tensor:
        return activation_ref(inputs[0], params[0]) * inputs[1]

    def vjp(self, grad_x: torch.Tensor, inputs: Sequence[torch.Tensor], params: tuple[str, ...]) -> list:
        gate, value = inputs
        return [activation_vjp(grad_x * value, gate, params[0]), grad_x * activation_ref(gate, params[0])]

    def loader(self, inputs: Sequence[torch.Tensor], params: tuple[str, ...]) -> Loader:
        return Loader(_load_gated, inputs[0].shape[-1], args=(ACTIVATIONS[params[0]],))

    def width(self, inputs: Sequence[torch.Tensor], params: tuple[str, ...]) -> int:
        return inputs[0].shape[-1]

    def check(self, inputs: Sequence[torch.Tensor], params: tuple[str, ...]) -> None:
        if len(inputs) != 2 or len(params) != 1:
            raise ValueError(f"gated takes two inputs (a, b) and one activation, got {len(inputs)} and {params}")
        check_activation(params[0])
        if inputs[0].shape != inputs[1].shape or inputs[0].dtype != inputs[1].dtype:
            raise ValueError(f"gated's inputs must match in shape and dtype, got {tuple(inputs[0].shape)} "
                             f"{inputs[0].dtype} and {tuple(inputs[1].shape)} {inputs[1].dtype}")  # fmt: skip

    def describe(self, params: tuple[str, ...]) -> str:
        return f"{params[0]}(a)·b"


def _same_shape(a: torch.fx.Node, b: torch.fx.Node, product: torch.fx.Node) -> bool:
    """a, b and their product of one shape and dtype: no broadcasting for the loader to follow."""
    values = [fake_value(node) for node in (a, b, product)]
    if not all(isinstance(value, torch.Tensor) for value in values):
        return False
    return all(value.shape == values[0].shape and value.dtype == values[0].dtype for value in values)

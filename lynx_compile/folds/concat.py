"""A concatenation along features producing x, each piece possibly activated: FLUX's single-block output projection
reads cat([attention, GELU(MLP up-projection)], -1).

Folded, the op takes the pieces (the GELU's input for an activated one) and the compressor loads each chunk of x
from the piece it lies in, applying that piece's activation: the concatenation is never written.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.fx

from ..kernels.activations import ACTIVATIONS, activation_ref, activation_vjp, check_activation
from ..kernels.prune_compress_24 import Loader
from .activation import activation_input
from .base import FoldMatch, FoldSpec, ProducerFold, argument, fake_value, through_identities

try:
    import triton
    import triton.language as tl

    from ..kernels.activations import apply_activation
    from ..kernels.prune_compress_24 import load_tile
except ImportError:
    triton = None

_CAT_FUNCTIONS = {torch.cat, torch.concat, torch.concatenate}
MAX_PIECES = 2  # the loader reads a head and a tail; FLUX needs no more
PIECE_MULTIPLE = 64  # a piece's width: the compressor's chunks (up to 256 columns) then stay wide


if triton is not None:

    @triton.jit
    def _load_concat(operands, strides, scalars, rows, start, M, ARGS: tl.constexpr, WIDTH: tl.constexpr):
        """Chunks never straddle the pieces (`Loader.segments`): each comes whole from the head or the tail."""
        split = scalars[0]
        if start < split:
            x = load_tile(operands[0], strides[0], strides[1], rows, start, M, WIDTH)
            x = apply_activation(x, ARGS[0])
        else:
            x = load_tile(operands[1], strides[2], strides[3], rows, start - split, M, WIDTH)
            x = apply_activation(x, ARGS[1])
        return x

else:
    _load_concat = None


class Concat(ProducerFold):
    """x = cat([act₀(p₀), act₁(p₁)], -1), params (act₀, act₁); "none" for a piece taken as it is."""

    kind = "concat"

    def match(self, x: torch.fx.Node) -> FoldMatch | None:
        skipped, cat = through_identities(x)
        pieces = _cat_pieces(cat)
        if pieces is None:
            return None
        folded = FoldMatch(FoldSpec(self.kind, ()), [], [*skipped, cat])
        names = []
        for piece in pieces:
            piece_skipped, produced = through_identities(piece)
            found = activation_input(produced)
            if found is None:  # nothing to fold here: the piece stays as it is, dropout and all
                folded.inputs.append(piece)
                names.append("none")
                continue
            folded.inputs.append(found[0])
            names.append(found[1])
            folded.absorbed.extend([*piece_skipped, produced])
        folded.spec = FoldSpec(self.kind, tuple(names))
        return folded

    def reference(self, inputs: Sequence[torch.Tensor], params: tuple[str, ...]) -> torch.Tensor:
        return torch.cat([activation_ref(piece, name) for piece, name in zip(inputs, params)], dim=-1)

    def vjp(self, grad_x: torch.Tensor, inputs: Sequence[torch.Tensor], params: tuple[str, ...]) -> list:
        grads = grad_x.split([piece.shape[-1] for piece in inputs], dim=-1)
        return [activation_vjp(grad, piece, name) for grad, piece, name in zip(grads, inputs, params)]

    def loader(self, inputs: Sequence[torch.Tensor], params: tuple[str, ...]) -> Loader:
        widths = tuple(piece.shape[-1] for piece in inputs)
        head, tail = params[0], params[-1]
        return Loader(_load_concat, sum(widths), args=(ACTIVATIONS[head], ACTIVATIONS[tail]), scalars=(widths[0],),
                      segments=widths, pieces=tuple(ACTIVATIONS[name] for name in params))  # fmt: skip

    def width(self, inputs: Sequence[torch.Tensor], params: tuple[str, ...]) -> int:
        return sum(piece.shape[-1] for piece in inputs)

    def check(self, inputs: Sequence[torch.Tensor], params: tuple[str, ...]) -> None:
        if not 1 <= len(inputs) <= MAX_PIECES or len(params) != len(inputs):
            raise ValueError(f"concat takes 1 to {MAX_PIECES} pieces with an activation each, got {len(inputs)} "
                             f"and {params}")  # fmt: skip
        for piece, name in zip(inputs, params):
            check_activation(name)
            if piece.shape[-1] % 4:
                raise ValueError(f"a piece's width must be a multiple of 4 (K % 4 == 0), got {tuple(piece.shape)}")

    def describe(self, params: tuple[str, ...]) -> str:
        return f"cat({', '.join(params)})"


def _cat_pieces(node: torch.fx.Node) -> list[torch.fx.Node] | None:
    """The pieces of a one-user concatenation along the last dimension whose widths suit the compressor."""
    if node.op != "call_function" or node.target not in _CAT_FUNCTIONS or len(node.users) != 1:
        return None
    pieces = argument(node, 0, "tensors")
    dim = argument(node, 1, "dim", 0)
    if not isinstance(pieces, (list, tuple)) or len(pieces) != MAX_PIECES:
        return None
    if not all(isinstance(piece, torch.fx.Node) for piece in pieces):
        return None
    values = [fake_value(piece) for piece in pieces]
    result = fake_value(node)
    if not all(isinstance(v, torch.Tensor) for v in (*values, result)) or dim not in (-1, result.ndim - 1):
        return None
    if any(v.dtype != result.dtype or v.ndim != result.ndim or v.shape[-1] % PIECE_MULTIPLE for v in values):
        return None
    return list(pieces)

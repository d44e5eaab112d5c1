"""Which producer of a linear's input the sparse op can absorb, so that x is pruned as it is loaded, never written.

The input of a DiT's MLP down-projection is GELU(up-projection); the FLUX single block's output projection reads
cat([attention, GELU(MLP up-projection)], -1). Unfused, a kernel writes that x densely and the compressor reads it
back: at K = 12288 and 15360, the x round trip is a fifth of the sparsified layer's time (benchmarks/RESULTS.md).
Folded, `lynx::sparse_linear` takes the GELU's input (or the concatenation's pieces) and an activation per piece,
and the compressor applies them on load (`kernels/activations.py`).

Only producers whose one user is the linear are folded: otherwise x is written for its other users anyway. An
inference-time dropout (`training=False`, which Dynamo keeps in the graph: diffusers' FeedForward has one between
its GELU and its down-projection) is looked through, and erased with the producers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx

from ..kernels.activations import GELU_APPROXIMATE
from .utils import fake_value

_GELU_FUNCTIONS = {torch._C._nn.gelu, torch.nn.functional.gelu}
_CAT_FUNCTIONS = {torch.cat, torch.concat, torch.concatenate}
_GELU_NAMES = {approximate: name for name, approximate in GELU_APPROXIMATE.items()}  # F.gelu's approximate → name
_DROPOUT_FUNCTIONS = {torch.nn.functional.dropout, torch.dropout}
PIECE_MULTIPLE = 64  # a piece's width: the compressor's chunks (up to 256 columns) never straddle two pieces


@dataclass
class FoldedInput:
    """x = cat([act(i) for i in inputs], -1); `absorbed` are the producer nodes the rewrite may then erase."""

    inputs: list[torch.fx.Node]
    activations: list[str]
    absorbed: list[torch.fx.Node]

    def describe(self) -> str:
        """`gelu_tanh` or `cat(none, gelu_tanh)`, for reasons and reports."""
        names = ", ".join(self.activations)
        return names if len(self.inputs) == 1 else f"cat({names})"


def fold_input(x: torch.fx.Node) -> FoldedInput | None:
    """The pieces and activations x is made of, as far as the sparse op can absorb them; None for nothing to fold."""
    skipped, x = _through_identities(x)
    pieces = _cat_pieces(x)
    if pieces is None:
        source, activation = _gelu_input(x)
        return None if source is x else FoldedInput([source], [activation], [*skipped, x])
    folded = FoldedInput([], [], [*skipped, x])
    for piece in pieces:
        skipped, unwrapped = _through_identities(piece)
        source, activation = _gelu_input(unwrapped)
        if source is unwrapped:  # nothing to fold here: the piece stays as it is, dropout and all
            source, skipped = piece, []
        folded.inputs.append(source)
        folded.activations.append(activation)
        if source is not piece:
            folded.absorbed.extend([*skipped, unwrapped])
    return folded


def _through_identities(node: torch.fx.Node) -> tuple[list[torch.fx.Node], torch.fx.Node]:
    """(the one-user inference-time dropouts in front of node, outermost first; what they pass through)."""
    skipped = []
    while node.op == "call_function" and node.target in _DROPOUT_FUNCTIONS and len(node.users) == 1:
        training = node.args[2] if len(node.args) > 2 else node.kwargs.get("training", node.kwargs.get("train", True))
        source = node.args[0] if node.args else node.kwargs.get("input")
        if training is not False or not isinstance(source, torch.fx.Node):
            break
        skipped.append(node)
        node = source
    return skipped, node


def _gelu_input(node: torch.fx.Node) -> tuple[torch.fx.Node, str]:
    """(GELU's input, its name) for a GELU node with one user; (node, "none") for anything else."""
    if node.op != "call_function" or node.target not in _GELU_FUNCTIONS or len(node.users) != 1:
        return node, "none"
    source = node.args[0] if node.args else node.kwargs.get("input")
    approximate = node.args[1] if len(node.args) > 1 else node.kwargs.get("approximate", "none")
    if not isinstance(source, torch.fx.Node) or approximate not in _GELU_NAMES:
        return node, "none"
    return source, _GELU_NAMES[approximate]


def _cat_pieces(node: torch.fx.Node) -> list[torch.fx.Node] | None:
    """The two pieces of a one-user concatenation along the last dimension whose widths suit the compressor."""
    if node.op != "call_function" or node.target not in _CAT_FUNCTIONS or len(node.users) != 1:
        return None
    pieces = node.args[0] if node.args else node.kwargs.get("tensors")
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    if not isinstance(pieces, (list, tuple)) or len(pieces) != 2:
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

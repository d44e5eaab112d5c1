"""No producer folded: the op's one input is x itself. The default every other fold falls back to."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.fx

from ..kernels.prune_compress_24 import Loader, load_rows
from .base import FoldMatch, ProducerFold


class Identity(ProducerFold):
    kind = "identity"

    def match(self, x: torch.fx.Node) -> FoldMatch | None:
        return None  # never a match: it is what remains when nothing else matches

    def reference(self, inputs: Sequence[torch.Tensor], params: tuple[str, ...]) -> torch.Tensor:
        return inputs[0]

    def vjp(self, grad_x: torch.Tensor, inputs: Sequence[torch.Tensor], params: tuple[str, ...]) -> list:
        return [grad_x]

    def loader(self, inputs: Sequence[torch.Tensor], params: tuple[str, ...]) -> Loader:
        return Loader(load_rows, inputs[0].shape[-1], pieces=(0,))

    def width(self, inputs: Sequence[torch.Tensor], params: tuple[str, ...]) -> int:
        return inputs[0].shape[-1]

    def check(self, inputs: Sequence[torch.Tensor], params: tuple[str, ...]) -> None:
        if len(inputs) != 1 or params:
            raise ValueError(f"identity takes one input and no parameters, got {len(inputs)} and {params}")

    def describe(self, params: tuple[str, ...]) -> str:
        return "none"

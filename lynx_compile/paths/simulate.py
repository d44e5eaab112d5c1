"""The simulate path: the method's exact numerics on any device — prune (the Triton kernel on CUDA, the reference
elsewhere), a dense GEMM, the norm scale, bias — for quality studies. Slower than dense; never timed."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..folds import assemble
from ..method import Lora, sparse_linear_ref
from ..plan import SparseLinearPlan
from .base import SparsePath


class Simulate(SparsePath):
    name = "simulate"
    execution = "simulate"
    measured = False

    def forward(self, inputs: Sequence[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor | None, lora: Lora,
                plan: SparseLinearPlan) -> torch.Tensor:  # fmt: skip
        x = assemble(inputs, plan.fold)
        return sparse_linear_ref(x, weight, bias, plan.method, lora, prune=torch.ops.lynx.nm_prune.default)

    def describe(self, params: dict[str, Any]) -> str:
        return "simulated"

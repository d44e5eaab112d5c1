"""The simulate path of torchao float8 layers: `lynx_compile.fp8`'s numerics on any device — prune x n:m, quantize
each pruned row to e4m3, the GEMM against torchao's e4m3 weight with both scales, the norm scale, the bias — in pure
torch. What the FP8 sparse kernels compute, for quality studies and CPU tests; never timed."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..float8 import Float8Weight
from ..folds import assemble
from ..fp8 import float8_linear_ref
from ..method import Lora
from ..plan import SparseLinearPlan
from .base import SparsePath


class SimulateFloat8(SparsePath):
    name = "simulate_float8"
    execution = "simulate"
    measured = False
    float8 = True

    def forward(self, inputs: Sequence[torch.Tensor], weight: Float8Weight, bias: torch.Tensor | None, lora: Lora,
                plan: SparseLinearPlan) -> torch.Tensor:  # fmt: skip
        return float8_linear_ref(assemble(inputs, plan.fold), weight.qdata, weight.scale, bias, plan.method)

    def describe(self, params: dict[str, Any]) -> str:
        return "simulated on rowwise FP8 (e4m3)"

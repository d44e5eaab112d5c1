"""FP8 × 2:4: the numerics of a sparsified linear on top of rowwise FP8 (e4m3), in pure torch.

The order of operations, as a user of FP8 expects it and as a fused kernel would run it:

1. prune x to n:m along K (the kept values are x's own, unscaled);
2. quantize the pruned row to e4m3 with *its own* scale, amax(|x̃ᵢ|) / 448 — the pruned row's, not the dense row's:
   pruning drops the small values, so the kept ones use the FP8 range at least as well;
3. the GEMM of the e4m3 operands, fp32 accumulation, then per row the activation scale and the norm compensation
   ‖xᵢ‖ / ‖x̃ᵢ‖ (computed from the unquantized rows, as without FP8), per output feature the weight's scale, then
   the bias, then the cast to the output dtype.

The weight is quantized per output feature (torchao's `PerRow`), once. Without pruning (`method=None`) this is
dense rowwise FP8, the baseline a user already runs. The products of e4m3 values are exact in fp32, so computing
the GEMM on dequantized operands in fp32 gives what a tensor-core FP8 GEMM gives up to summation order.
"""

from __future__ import annotations

import torch

from .kernels.e4m3 import E4M3_LEAST_AMAX, E4M3_MAX
from .kernels.nm_prune import nm_prune_ref
from .method import Method


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x as e4m3, the fp32 scale of each row: amax / 448); an all-zero row gets scale 1 and stays zero; a row with
    a NaN or an Inf keeps it to itself; a row's amax is taken at least `E4M3_LEAST_AMAX`. The rows are multiplied by
    448 / amax (one division per row, as the kernels do: a division per element costs them more than the memory
    traffic)."""
    amax = x.detach().float().abs().amax(dim=-1, keepdim=True)
    positive = amax > 0  # False for a NaN amax: scale 1, and the NaN stays in its row
    amax = amax.clamp(min=E4M3_LEAST_AMAX)
    scale = torch.where(positive, amax / E4M3_MAX, torch.ones_like(amax))
    # a tensor by a tensor: an IEEE division (a Python number by a tensor is a reciprocal times the number in torch)
    inverse = torch.where(positive, torch.full_like(amax, E4M3_MAX) / amax, torch.ones_like(amax))
    quantized = (x.float() * inverse).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return quantized, scale


def fp8_linear_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                   method: Method | None = None) -> torch.Tensor:  # fmt: skip
    """y = x·Wᵀ + b with x quantized per token and W per output feature to e4m3; with `method`, x is first pruned
    n:m along K (and the norm compensation applied after the GEMM, where the method has it)."""
    weight_q, weight_scale = quantize_rows(weight)
    return float8_linear_ref(x, weight_q, weight_scale.reshape(-1), bias, method)


def float8_linear_ref(x: torch.Tensor, weight_q: torch.Tensor, weight_scale: torch.Tensor,
                      bias: torch.Tensor | None = None, method: Method | None = None) -> torch.Tensor:  # fmt: skip
    """The same for a weight already quantized: e4m3 (N, K) with its scale per output feature (N,)."""
    rows = x.reshape(-1, x.shape[-1]).float()
    kept, norm_scale = (rows, None) if method is None else nm_prune_ref(rows, method.n, method.m)
    x_q, x_scale = quantize_rows(kept)
    out = (x_q.float() * x_scale) @ (weight_q.float() * weight_scale.float()[:, None]).t()
    if method is not None and method.norm_compensation:
        out = out * norm_scale[:, None]
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype).reshape(*x.shape[:-1], weight_q.shape[0])

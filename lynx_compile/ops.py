"""The lynx custom ops that the graph passes emit, with the fake implementations Dynamo, AOT and Inductor trace.

- ``lynx::sparse_linear(inputs, weight, bias, lora_a, lora_b, plan)``: what the rewrite puts where a chosen linear
  was, the unit of decision. Its input x is made from ``inputs`` by the producer fold the plan names
  (`lynx_compile.folds`): usually x itself, but a GELU or a concatenation producing x is absorbed where it can be, so
  that the sparse path prunes x as it loads it and x is never written. ``plan`` (a `SparseLinearPlan`, encoded) says
  everything else: the sparse path that runs it (`lynx_compile.paths`) and that path's settings, the method's
  settings, the fold. ``lora_a``/``lora_b``, when given, add the calibrated correction (x·Bᵀ)·Aᵀ of the dense x.
  The Inductor pass `lower_sparse_linears` replaces it by its path's parts so that Inductor fuses the epilogue.
- ``lynx::nm_prune(x, n, m) -> (pruned, scale)``: the Triton kernel on CUDA, the reference elsewhere.
- ``lynx::prune_compress_24(inputs, fold, row_multiple) -> (operand, scale)``: cuSPARSELt's compressed operand of
  x̃ (sm_90), x̃ pruned from x = the fold of ``inputs`` as the compressor loads them, its rows padded with zeros to
  a multiple of ``row_multiple``; and the rows' norm scale s.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .folds import FoldSpec, assemble, compress, get_fold
from .kernels.nm_prune import nm_keep_mask_ref, nm_prune, norm_scale_ref
from .kernels.prune_compress_24 import compressed_shape, padded_rows
from .method import Lora, token_rows
from .paths import get_path
from .plan import SparseLinearPlan

# The op's arguments, in schema order: the rewrite builds calls from them, the lowering's pattern matches them.
SPARSE_LINEAR_ARGS = ("inputs", "weight", "bias", "lora_a", "lora_b", "plan")


@torch.library.custom_op("lynx::nm_prune", mutates_args=())
def nm_prune_op(x: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    return nm_prune(x, n, m)


@nm_prune_op.register_fake
def _(x: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty((x.shape[0],), dtype=torch.float32)


@torch.library.custom_op("lynx::prune_compress_24", mutates_args=())
def prune_compress_24_op(
    inputs: list[torch.Tensor], fold: str, row_multiple: int
) -> tuple[torch.Tensor, torch.Tensor]:
    return compress(inputs, FoldSpec.decode(fold), row_multiple)


@prune_compress_24_op.register_fake
def _(inputs: list[torch.Tensor], fold: str, row_multiple: int) -> tuple[torch.Tensor, torch.Tensor]:
    spec = FoldSpec.decode(fold)
    rows, k = token_rows(inputs[0]), get_fold(spec.kind).width(inputs, spec.params)
    operand = inputs[0].new_empty(compressed_shape(padded_rows(rows, row_multiple), k))
    return operand, inputs[0].new_empty((rows,), dtype=torch.float32)


@torch.library.custom_op("lynx::sparse_linear", mutates_args=())
def sparse_linear(
    inputs: list[torch.Tensor],
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    lora_a: Optional[torch.Tensor],
    lora_b: Optional[torch.Tensor],
    plan: str,  # no defaults: AOT would turn defaulted arguments into kwargs, which the lowering pattern misses
) -> torch.Tensor:
    decoded = SparseLinearPlan.decode(plan)
    lora = _lora_pair(lora_a, lora_b)
    # The run-time check matters only for a symbolic token count; static counts are decided at compile time. A layer
    # that falls back runs dense, so it also drops its correction: the correction is of the pruning error. Where
    # a path cannot run the count (off its `row_multiple`), dense is the honest fallback (simulation is slower).
    if not decoded.sparse_at(token_rows(inputs[0])):
        return F.linear(assemble(inputs, decoded.fold), weight, bias)
    return get_path(decoded.path).forward(inputs, weight, bias, lora, decoded)


@sparse_linear.register_fake
def _(inputs, weight, bias, lora_a, lora_b, plan):
    return inputs[0].new_empty((*inputs[0].shape[:-1], weight.shape[0]))


def sparse_linear_args(
    inputs: list, weight: object, bias: object, lora: tuple | None, plan: SparseLinearPlan
) -> tuple:
    """The op's positional arguments (`SPARSE_LINEAR_ARGS`), for graph rewrites and direct calls."""
    lora_a, lora_b = lora if lora is not None else (None, None)
    return (list(inputs), weight, bias, lora_a, lora_b, plan.encode())


def _lora_pair(lora_a: torch.Tensor | None, lora_b: torch.Tensor | None) -> Lora:
    if (lora_a is None) != (lora_b is None):
        raise ValueError("lynx::sparse_linear: lora_a and lora_b must be given together")
    return None if lora_a is None else (lora_a, lora_b)


# Gradients (straight-through): the mask and the scale are held constant, so y = s ⊙ (x ⊙ mask)·Wᵀ + b is linear in
# x, W and b. Inference is the target; this exists so that compiling a model whose parameters require grad works.
# The correction adapters are calibrated constants: they pass gradient to x but get none themselves.
def _setup_backward(ctx, inputs, output):
    tensors, weight, bias, lora_a, lora_b, plan = inputs
    ctx.save_for_backward(weight, lora_a, lora_b, *tensors)
    ctx.has_bias, ctx.plan = bias is not None, SparseLinearPlan.decode(plan)


def _backward(ctx, grad_out):
    weight, lora_a, lora_b, *tensors = ctx.saved_tensors
    plan, method = ctx.plan, ctx.plan.method
    x = assemble(tensors, plan.fold)
    rows = x.reshape(-1, weight.shape[1])
    grad_out_rows = grad_out.reshape(-1, weight.shape[0])
    grad_rows, keep, pruned = grad_out_rows, None, rows
    if plan.sparse_at(rows.shape[0]):
        keep = nm_keep_mask_ref(rows, method.n, method.m)
        pruned = torch.where(keep, rows, 0)
        if method.norm_compensation:
            grad_rows = (grad_rows.float() * norm_scale_ref(rows, keep).unsqueeze(1)).to(grad_rows.dtype)
    grad_x = grad_rows @ weight
    if keep is not None:
        grad_x = torch.where(keep, grad_x, 0)
        if lora_a is not None:
            grad_x = grad_x + (grad_out_rows @ lora_a) @ lora_b
    grad_weight = grad_rows.t() @ pruned
    grad_bias = grad_out_rows.sum(0) if ctx.has_bias else None
    grad_inputs = get_fold(plan.fold.kind).vjp(grad_x.reshape(x.shape), tensors, plan.fold.params)
    return grad_inputs, grad_weight, grad_bias, None, None, None


sparse_linear.register_autograd(_backward, setup_context=_setup_backward)

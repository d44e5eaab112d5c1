"""The lynx custom ops that the graph passes emit, with the fake implementations Dynamo, AOT and Inductor trace.

- ``lynx::sparse_linear(inputs, weight, bias, lora_a, lora_b, plan)``: what the rewrite puts where a chosen linear
  was, the unit of decision. Its input x is made from ``inputs`` by the producer fold the plan names
  (`lynx_compile.folds`): usually x itself, but a GELU or a concatenation producing x is absorbed where it can be, so
  that the sparse path prunes x as it loads it and x is never written. ``plan`` (a `SparseLinearPlan`, encoded) says
  everything else: the sparse path that runs it (`lynx_compile.paths`) and that path's settings, the method's
  settings, the fold. ``lora_a``/``lora_b``, when given, add the calibrated correction (x·Bᵀ)·Aᵀ of the dense x.
  The Inductor pass `lower_sparse_linears` replaces it by its path's parts so that Inductor fuses the epilogue.
- ``lynx::sparse_linear_group(inputs, weights, biases, biased, plan) -> [y, ...]``: sibling linears that read one x
  (q, k, v), decided and run as a unit: x pruned and compressed once, one output per weight. ``biases`` are the
  biases of the members listed in ``biased`` (a list of optional tensors would have no autograd support). No LoRA
  (a member with a correction is not grouped).
- ``lynx::float8_sparse_linear(inputs, weight, weight_scale, bias, plan)``: the same for a torchao float8 layer
  (`lynx_compile.float8`), whose weight arrives as torchao stores it: e4m3 data (N, K) and its scale, (N, 1) or
  (1, 1). Its paths are the float8 ones; below the plan's token count it runs rowwise FP8 dense. Lowered where its
  path runs kernel ops (`SparsePath.lowers_float8`): not for an epilogue to fuse (its kernels apply every scale and
  the bias) but to take this op's Python layers off every call of a model run without CUDA graphs.
- ``lynx::float8_sparse_linear_group(inputs, weights, weight_scales, biases, biased, plan) -> [y, ...]``: sibling
  float8 layers as one unit, as the group op above: x pruned, quantized and compressed once for every member's FP8
  GEMM; below the plan's token count, x quantized once for every member's rowwise FP8 dense GEMM.
- ``lynx::nm_prune(x, n, m) -> (pruned, scale)``: the Triton kernel on CUDA, the reference elsewhere.
- ``lynx::prune_compress_24(inputs, fold, pad_rows_to) -> (operand, scale)``: cuSPARSELt's compressed operand of
  x̃ (sm_90), x̃ pruned from x = the fold of ``inputs`` as the compressor loads them, its rows padded with zeros to
  a multiple of ``pad_rows_to``; and the rows' norm scale s.
- ``lynx::prune_compress_24_cutlass(inputs, fold) -> (values, metadata, scale)``: the same prune, in the operand
  layout of lynx's CUTLASS sparse GEMM (`kernels/cutlass_layout.py`).
- ``lynx::prune_quantize_compress_fp8(inputs, fold, norm_compensation) -> (values, metadata, scale)``: the same
  prune, each pruned row quantized to e4m3, in the layout of the CUTLASS FP8 GEMM; the row scale (quantization ×
  norm) its epilogue applies.

Under autocast, ``lynx::sparse_linear`` (and the group op) does what ``F.linear`` does (ATen lists it as a
lower-precision op): its floating-point tensors on the autocast device, fp64 excepted, are cast to the autocast
dtype, and it computes and returns in that dtype, so the mask is the one a reduced-precision linear's input would
get. The kernel ops take their inputs as given. Either way the bodies run with autocast off: inside them every
dtype is chosen explicitly.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .float8 import Float8Weight, dense_float8_linear, dense_float8_linears, weight_scale_per_row
from .folds import FoldSpec, assemble, compress, compress_cutlass, compress_fp8, get_fold
from .kernel_op import kernel_op
from .kernels.nm_prune import nm_keep_mask_ref, nm_prune, norm_scale_ref
from .kernels.prune_compress_24 import compressed_shape, cutlass_operand, padded_rows
from .method import Lora, cast_like_autocast, token_rows
from .paths import get_path
from .plan import SparseLinearPlan

_AUTOCAST_DEVICES = ("cpu", "cuda")

# The ops' arguments, in schema order: the rewrite builds calls from them, the lowering's patterns match them.
SPARSE_LINEAR_ARGS = ("inputs", "weight", "bias", "lora_a", "lora_b", "plan")
SPARSE_LINEAR_GROUP_ARGS = ("inputs", "weights", "biases", "biased", "plan")
FLOAT8_SPARSE_LINEAR_ARGS = ("inputs", "weight", "weight_scale", "bias", "plan")
FLOAT8_SPARSE_LINEAR_GROUP_ARGS = ("inputs", "weights", "weight_scales", "biases", "biased", "plan")


@torch.library.custom_op("lynx::nm_prune", mutates_args=())
def nm_prune_op(x: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    return nm_prune(x, n, m)


@nm_prune_op.register_fake
def _(x: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty((x.shape[0],), dtype=torch.float32)


@kernel_op("lynx::prune_compress_24")
def prune_compress_24_op(
    inputs: list[torch.Tensor], fold: str, pad_rows_to: int
) -> tuple[torch.Tensor, torch.Tensor]:
    return compress(inputs, FoldSpec.decode(fold), pad_rows_to)


@torch.library.register_fake("lynx::prune_compress_24")
def _(inputs: list[torch.Tensor], fold: str, pad_rows_to: int) -> tuple[torch.Tensor, torch.Tensor]:
    spec = FoldSpec.decode(fold)
    rows, k = token_rows(inputs[0]), get_fold(spec.kind).width(inputs, spec.params)
    operand = inputs[0].new_empty(compressed_shape(padded_rows(rows, pad_rows_to), k))
    return operand, inputs[0].new_empty((rows,), dtype=torch.float32)


@kernel_op("lynx::prune_compress_24_cutlass")
def prune_compress_24_cutlass_op(
    inputs: list[torch.Tensor], fold: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return compress_cutlass(inputs, FoldSpec.decode(fold))


def _cutlass_operand_like(inputs: list[torch.Tensor], fold: str, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """The fake of a compressor writing CUTLASS's layout: (values M × K/2 of `dtype`, metadata bytes, s (M,))."""
    spec = FoldSpec.decode(fold)
    rows, k = token_rows(inputs[0]), get_fold(spec.kind).width(inputs, spec.params)
    values, metadata = cutlass_operand(rows, k, dtype, inputs[0].device)
    return values, metadata, inputs[0].new_empty((rows,), dtype=torch.float32)


@torch.library.register_fake("lynx::prune_compress_24_cutlass")
def _(inputs: list[torch.Tensor], fold: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _cutlass_operand_like(inputs, fold, inputs[0].dtype)


@kernel_op("lynx::prune_quantize_compress_fp8")
def prune_quantize_compress_fp8_op(
    inputs: list[torch.Tensor], fold: str, norm_compensation: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return compress_fp8(inputs, FoldSpec.decode(fold), norm_compensation)


@torch.library.register_fake("lynx::prune_quantize_compress_fp8")
def _(inputs: list[torch.Tensor], fold: str, norm_compensation: bool) -> tuple[torch.Tensor, ...]:
    return _cutlass_operand_like(inputs, fold, torch.float8_e4m3fn)


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
    # The run-time check matters only where compile time could not settle it (the lowering then leaves the op
    # opaque): a call outside the graph's guards, a path that runs only some token counts (`row_multiple`). A layer
    # that falls back runs dense, so it also drops its correction: the correction is of the pruning error; dense is
    # the honest fallback (simulation is slower).
    if not decoded.sparse_at(token_rows(inputs[0])):
        return F.linear(assemble(inputs, decoded.fold), weight, bias)
    return get_path(decoded.path).forward(inputs, weight, bias, lora, decoded)


@sparse_linear.register_fake
def _(inputs, weight, bias, lora_a, lora_b, plan):
    return inputs[0].new_empty((*inputs[0].shape[:-1], weight.shape[0]))


@torch.library.custom_op("lynx::float8_sparse_linear", mutates_args=())
def float8_sparse_linear(
    inputs: list[torch.Tensor], weight: torch.Tensor, weight_scale: torch.Tensor, bias: Optional[torch.Tensor],
    plan: str,
) -> torch.Tensor:
    decoded = SparseLinearPlan.decode(plan)
    member = float8_weight(weight, weight_scale)
    if not decoded.sparse_at(token_rows(inputs[0])):  # as for sparse_linear: dense below min_tokens
        return dense_float8_linear(inputs, decoded.fold, member, bias)
    return get_path(decoded.path).forward(inputs, member, bias, None, decoded)


@float8_sparse_linear.register_fake
def _(inputs, weight, weight_scale, bias, plan):
    return inputs[0].new_empty((*inputs[0].shape[:-1], weight.shape[0]))


@torch.library.custom_op("lynx::sparse_linear_group", mutates_args=())
def sparse_linear_group(
    inputs: list[torch.Tensor], weights: list[torch.Tensor], biases: list[torch.Tensor], biased: list[int], plan: str
) -> list[torch.Tensor]:
    decoded = SparseLinearPlan.decode(plan)
    member_biases = member_bias_list(len(weights), biases, biased)
    if not decoded.sparse_at(token_rows(inputs[0])):  # as for one layer: dense below min_tokens
        x = assemble(inputs, decoded.fold)
        return [F.linear(x, weight, bias) for weight, bias in zip(weights, member_biases)]
    return get_path(decoded.path).forward_group(inputs, weights, member_biases, decoded)


@sparse_linear_group.register_fake
def _(inputs, weights, biases, biased, plan):
    return [inputs[0].new_empty((*inputs[0].shape[:-1], weight.shape[0])) for weight in weights]


@torch.library.custom_op("lynx::float8_sparse_linear_group", mutates_args=())
def float8_sparse_linear_group(
    inputs: list[torch.Tensor], weights: list[torch.Tensor], weight_scales: list[torch.Tensor],
    biases: list[torch.Tensor], biased: list[int], plan: str,
) -> list[torch.Tensor]:
    decoded = SparseLinearPlan.decode(plan)
    members = [float8_weight(weight, scale) for weight, scale in zip(weights, weight_scales)]
    member_biases = member_bias_list(len(weights), biases, biased)
    if not decoded.sparse_at(token_rows(inputs[0])):  # as for one layer: rowwise FP8 dense below min_tokens
        return dense_float8_linears(inputs, decoded.fold, members, member_biases)
    return get_path(decoded.path).forward_group(inputs, members, member_biases, decoded)


@float8_sparse_linear_group.register_fake
def _(inputs, weights, weight_scales, biases, biased, plan):
    return [inputs[0].new_empty((*inputs[0].shape[:-1], weight.shape[0])) for weight in weights]


def float8_weight(weight: torch.Tensor, weight_scale: torch.Tensor) -> Float8Weight:
    """torchao's e4m3 data and scale as the float8 paths take them."""
    return Float8Weight(weight.contiguous(), weight_scale_per_row(weight_scale, weight.shape[0]))


def float8_sparse_linear_args(inputs: list, weight: object, weight_scale: object, bias: object,
                              plan: SparseLinearPlan) -> tuple:  # fmt: skip
    """`lynx::float8_sparse_linear`'s positional arguments: torchao's e4m3 data and scale of the weight, as stored."""
    return (list(inputs), weight, weight_scale, bias, plan.encode())


def float8_sparse_linear_group_args(inputs: list, weights: list, weight_scales: list, biases: list,
                                    plan: SparseLinearPlan) -> tuple:  # fmt: skip
    """`lynx::float8_sparse_linear_group`'s positional arguments: as the group op's, with each member's scale."""
    inputs, weights, biases, biased, plan = sparse_linear_group_args(inputs, weights, biases, plan)
    return inputs, weights, list(weight_scales), biases, biased, plan


def member_bias_list(members: int, biases: list, biased: list[int]) -> list:
    """Each member's bias or None, from the group op's (biases, biased)."""
    by_member = dict(zip(biased, biases))
    return [by_member.get(index) for index in range(members)]


def sparse_linear_args(
    inputs: list, weight: object, bias: object, lora: tuple | None, plan: SparseLinearPlan
) -> tuple:
    """The op's positional arguments (`SPARSE_LINEAR_ARGS`), for graph rewrites and direct calls."""
    lora_a, lora_b = lora if lora is not None else (None, None)
    return (list(inputs), weight, bias, lora_a, lora_b, plan.encode())


def sparse_linear_group_args(inputs: list, weights: list, biases: list, plan: SparseLinearPlan) -> tuple:
    """The group op's positional arguments (`SPARSE_LINEAR_GROUP_ARGS`) from each member's bias or None."""
    biased = [index for index, bias in enumerate(biases) if bias is not None]
    return (list(inputs), list(weights), [biases[index] for index in biased], biased, plan.encode())


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
    lora = None if lora_a is None else (lora_a, lora_b)
    grad_inputs, (grad_weight,), (grad_bias,) = _straight_through(tensors, [weight], [grad_out], [ctx.has_bias],
                                                                 ctx.plan, lora)  # fmt: skip
    return grad_inputs, grad_weight, grad_bias, None, None, None


def _straight_through(tensors, weights, grad_outs, has_bias, plan: SparseLinearPlan, lora: Lora = None):
    """Gradients of layers y_i = s ⊙ (x ⊙ mask)·W_iᵀ + b_i reading one x, mask and s held constant: (the grads of
    the fold's inputs, of each weight, of each bias)."""
    method = plan.method
    x = assemble(tensors, plan.fold)
    rows = x.reshape(-1, weights[0].shape[1])
    keep, pruned, scale = None, rows, None
    if plan.sparse_at(rows.shape[0]):
        keep = nm_keep_mask_ref(rows, method.n, method.m)
        pruned = torch.where(keep, rows, 0)
        if method.norm_compensation:
            scale = norm_scale_ref(rows, keep).unsqueeze(1)
    grad_x, grad_weights, grad_biases = 0, [], []
    for weight, grad_out, bias in zip(weights, grad_outs, has_bias):
        grad_out_rows = grad_out.reshape(-1, weight.shape[0])
        grad_rows = grad_out_rows if scale is None else (grad_out_rows.float() * scale).to(grad_out_rows.dtype)
        grad_x = grad_x + grad_rows @ weight
        grad_weights.append(grad_rows.t() @ pruned)
        grad_biases.append(grad_out_rows.sum(0) if bias else None)
    if keep is not None:
        grad_x = torch.where(keep, grad_x, 0)
        if lora is not None:  # the correction reads the dense x: its gradient is not masked
            grad_x = grad_x + (grad_outs[0].reshape(-1, weights[0].shape[0]) @ lora[0]) @ lora[1]
    grad_inputs = get_fold(plan.fold.kind).vjp(grad_x.reshape(x.shape), tensors, plan.fold.params)
    return grad_inputs, grad_weights, grad_biases


sparse_linear.register_autograd(_backward, setup_context=_setup_backward)


def _setup_float8_backward(ctx, inputs, output):
    tensors, weight, weight_scale, bias, plan = inputs
    ctx.save_for_backward(weight, weight_scale, *tensors)
    ctx.has_bias, ctx.plan = bias is not None, SparseLinearPlan.decode(plan)


def _float8_backward(ctx, grad_out):
    """Straight through the pruning and the quantization, against the dequantized weight: x and the bias get their
    gradients, torchao's e4m3 weight (not trainable) none."""
    weight, weight_scale, *tensors = ctx.saved_tensors
    dequantized = _dequantized(weight, weight_scale, grad_out.dtype)
    grad_inputs, _, (grad_bias,) = _straight_through(tensors, [dequantized], [grad_out], [ctx.has_bias], ctx.plan)
    return grad_inputs, None, None, grad_bias, None


def _dequantized(weight: torch.Tensor, weight_scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (weight.float() * weight_scale_per_row(weight_scale, weight.shape[0])[:, None]).to(dtype)


float8_sparse_linear.register_autograd(_float8_backward, setup_context=_setup_float8_backward)


def _setup_float8_group_backward(ctx, inputs, output):
    tensors, weights, weight_scales, biases, biased, plan = inputs
    ctx.save_for_backward(*weights, *weight_scales, *tensors)
    ctx.members, ctx.biased, ctx.plan = len(weights), list(biased), SparseLinearPlan.decode(plan)


def _float8_group_backward(ctx, grad_outs):
    """As `_float8_backward`, for each member: x and the biases get gradients, the e4m3 weights none."""
    members = ctx.members
    weights, scales = ctx.saved_tensors[:members], ctx.saved_tensors[members : 2 * members]
    tensors = ctx.saved_tensors[2 * members :]
    dequantized = [_dequantized(weight, scale, grad.dtype) for weight, scale, grad in zip(weights, scales, grad_outs)]
    has_bias = [index in ctx.biased for index in range(members)]
    grad_inputs, _, grad_biases = _straight_through(tensors, dequantized, grad_outs, has_bias, ctx.plan)
    no_grad_for_biased = None if ctx.biased else []  # as in `_group_backward`
    return (grad_inputs, [None] * members, [None] * members, [grad_biases[index] for index in ctx.biased],
            no_grad_for_biased, None)  # fmt: skip


float8_sparse_linear_group.register_autograd(_float8_group_backward, setup_context=_setup_float8_group_backward)


def _setup_group_backward(ctx, inputs, output):
    tensors, weights, biases, biased, plan = inputs
    ctx.save_for_backward(*weights, *tensors)
    ctx.members, ctx.biased, ctx.plan = len(weights), list(biased), SparseLinearPlan.decode(plan)


def _group_backward(ctx, grad_outs):
    weights, tensors = ctx.saved_tensors[: ctx.members], ctx.saved_tensors[ctx.members :]
    has_bias = [index in ctx.biased for index in range(ctx.members)]
    grad_inputs, grad_weights, grad_biases = _straight_through(tensors, weights, grad_outs, has_bias, ctx.plan)
    # `biased` gets no gradient; torch matches the returned structure to the inputs', where an empty list is a list
    # and a list of ints a leaf.
    no_grad_for_biased = None if ctx.biased else []
    return grad_inputs, grad_weights, [grad_biases[index] for index in ctx.biased], no_grad_for_biased, None


sparse_linear_group.register_autograd(_group_backward, setup_context=_setup_group_backward)


def _register_autocast(op: torch._ops.OpOverload, cast: bool) -> None:
    """An autocast kernel per device: cast as a lower-precision op (`cast`) or not at all, then run with autocast off.

    `torch.library.register_autocast` would cast to one dtype fixed at registration, not the dtype of the autocast
    region in force, so the kernel is registered the way that function does it, reading the dtype at call time."""
    for device_type in _AUTOCAST_DEVICES:
        key = "Autocast" + torch._C._dispatch_key_for_device(device_type)
        excluded = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key))

        def kernel(keyset, *args, device_type=device_type, excluded=excluded):  # noqa: ANN001
            if cast:
                args = cast_like_autocast(args, device_type, torch.get_autocast_dtype(device_type))
            with torch._C._ExcludeDispatchKeyGuard(excluded):
                return op(*args)

        _AUTOCAST_LIBRARY.impl(op._schema.name.split("::")[1], kernel, key, with_keyset=True)


_AUTOCAST_LIBRARY = torch.library.Library("lynx", "FRAGMENT")
_register_autocast(torch.ops.lynx.sparse_linear.default, cast=True)
_register_autocast(torch.ops.lynx.sparse_linear_group.default, cast=True)
_register_autocast(torch.ops.lynx.float8_sparse_linear.default, cast=False)  # float8 layers under autocast stay dense
_register_autocast(torch.ops.lynx.float8_sparse_linear_group.default, cast=False)
_register_autocast(torch.ops.lynx.nm_prune.default, cast=False)
_register_autocast(torch.ops.lynx.prune_compress_24.default, cast=False)
_register_autocast(torch.ops.lynx.prune_compress_24_cutlass.default, cast=False)
_register_autocast(torch.ops.lynx.prune_quantize_compress_fp8.default, cast=False)

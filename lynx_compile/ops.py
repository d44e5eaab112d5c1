"""The lynx custom ops that the graph passes emit, with the fake implementations Dynamo, AOT and Inductor trace.

- ``lynx::sparse_linear(inputs, activations, weight, bias, lora_a, lora_b, n, m, norm_compensation, min_tokens, path,
  algorithm)``: what the rewrite pass puts where a chosen linear was. Its input x is ``cat([act(i) for i in inputs],
  -1)``: usually one input and "none", but the rewrite folds the producer of x into the op where it can (a GELU, a
  concatenation along features), so that the sparse path prunes x as it loads it and x is never written.
  ``activations`` holds one name per input, comma-separated (``"none,gelu_tanh"``: custom ops take no list of
  strings). It is the unit of decision; ``path`` says how it runs:
  ``"simulate"`` (prune, dense GEMM, per-row scale, bias: the method's numerics on any device) or ``"cusparselt"``
  (fused prune + compress, then cuSPARSELt's sparse GEMM with ``algorithm``). ``lora_a``/``lora_b``, when given,
  add the calibrated correction (x·Bᵀ)·Aᵀ of the dense x (`lynx_compile.lora`). The Inductor pass
  `lower_sparse_linears` replaces it by its parts so that Inductor fuses the epilogue.
- ``lynx::nm_prune(x, n, m) -> (pruned, scale)``: the Triton kernel on CUDA, the reference elsewhere.
- ``lynx::prune_compress_24(pieces, activations) -> (operand, scale)``: cuSPARSELt's compressed operand of x̃
  (sm_90), x̃ pruned from x = cat([act(p) for p in pieces], -1), and the rows' norm scale s.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .kernels.activations import GELU_APPROXIMATE, activation_ref
from .kernels.nm_prune import nm_keep_mask_ref, nm_prune, norm_scale_ref
from .kernels.prune_compress_24 import compressed_shape, prune_compress_24


@torch.library.custom_op("lynx::nm_prune", mutates_args=())
def nm_prune_op(x: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    return nm_prune(x, n, m)


@nm_prune_op.register_fake
def _(x: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty((x.shape[0],), dtype=torch.float32)


@torch.library.custom_op("lynx::prune_compress_24", mutates_args=())
def prune_compress_24_op(pieces: list[torch.Tensor], activations: str) -> tuple[torch.Tensor, torch.Tensor]:
    return prune_compress_24(pieces, activations)


@prune_compress_24_op.register_fake
def _(pieces: list[torch.Tensor], activations: str) -> tuple[torch.Tensor, torch.Tensor]:
    rows, k = pieces[0].shape[0], sum(piece.shape[1] for piece in pieces)
    return pieces[0].new_empty(compressed_shape(rows, k)), pieces[0].new_empty((rows,), dtype=torch.float32)


def assemble(inputs: list[torch.Tensor], activations: str) -> torch.Tensor:
    """x = cat([act(i) for i in inputs], -1): the dense input of a `lynx::sparse_linear`."""
    names = activations.split(",")
    if len(names) != len(inputs):
        raise ValueError(f"lynx::sparse_linear: {len(inputs)} inputs but activations {activations!r}")
    activated = [activation_ref(tensor, name) for tensor, name in zip(inputs, names)]
    return activated[0] if len(activated) == 1 else torch.cat(activated, dim=-1)


PruneFn = Callable[[torch.Tensor, int, int], "tuple[torch.Tensor, torch.Tensor]"]


Lora = Optional[tuple[torch.Tensor, torch.Tensor]]  # (lora_a (N, r), lora_b (r, K))


def simulated_sparse_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    n: int,
    m: int,
    norm_compensation: bool,
    prune: PruneFn,
    lora: Lora = None,
) -> torch.Tensor:
    """y = s ⊙ (prune(x) · Wᵀ) + b [+ (x·Bᵀ)·Aᵀ], x flattened to (tokens, K). Shared by the op and its lowering."""
    in_features = weight.shape[1]
    rows = x.reshape(-1, in_features)
    pruned, scale = prune(rows, n, m)
    out = torch.mm(pruned, weight.t())
    if norm_compensation:
        out = (out.float() * scale.unsqueeze(1)).to(out.dtype)
    return _epilogue(out, bias, lora, rows, x)


def cusparselt_linear(
    inputs: list[torch.Tensor],
    activations: str,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    algorithm: int,
    compress: Callable,
    lora: Lora = None,
) -> torch.Tensor:
    """y = s ⊙ (x̃·Wᵀ) + b [+ (x·Bᵀ)·Aᵀ] on sparse tensor cores, x = `assemble(inputs, activations)` pruned as it is
    loaded. The scale and the rest of the epilogue are plain torch: Inductor fuses them into one pointwise pass,
    or into the consumer's."""
    out, scale = cusparselt_gemm(inputs, activations, weight, algorithm, compress)
    out = (out.float() * scale.unsqueeze(1)).to(out.dtype)
    x = assemble(inputs, activations) if lora is not None else inputs[0]  # dense x only where the correction reads it
    return _epilogue(out, bias, lora, x.reshape(-1, x.shape[-1]), x)


def cusparselt_gemm(
    inputs: list[torch.Tensor], activations: str, weight: torch.Tensor, algorithm: int, compress: Callable
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̃·Wᵀ as rows × N, the rows' norm scale s): the sparse layer before its epilogue."""
    pieces = [tensor.reshape(-1, tensor.shape[-1]) for tensor in inputs]
    operand, scale = compress(pieces, activations)
    return torch._cslt_sparse_mm(operand, weight.t(), alg_id=algorithm), scale


def _epilogue(out: torch.Tensor, bias: torch.Tensor | None, lora: Lora, rows: torch.Tensor, x: torch.Tensor):
    """Bias and correction as one sum after the GEMM, which Inductor fuses into a single pass over Y (with the
    scale, on the simulate path); the correction's two small GEMMs read the dense rows."""
    if bias is not None:
        out = out + bias
    if lora is not None:
        lora_a, lora_b = lora
        out = out + torch.mm(torch.mm(rows, lora_b.t()), lora_a.t())
    return out.reshape(*x.shape[:-1], out.shape[-1])


@torch.library.custom_op("lynx::sparse_linear", mutates_args=())
def sparse_linear(
    inputs: list[torch.Tensor],
    activations: str,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_a: torch.Tensor | None,
    lora_b: torch.Tensor | None,
    n: int,
    m: int,
    norm_compensation: bool,
    min_tokens: int,
    path: str,  # "simulate" | "cusparselt"; not "kernel": Inductor's FallbackKernel.create takes that name itself
    algorithm: int,  # no defaults: AOT would turn defaulted arguments into kwargs, which the lowering pattern misses
) -> torch.Tensor:
    lora = _lora_pair(lora_a, lora_b)
    rows = math.prod(inputs[0].shape[:-1])
    # The run-time checks matter only for a symbolic token count; static counts are decided at compile time. A layer
    # that falls back runs dense, so it also drops its correction: the correction is of the pruning error.
    # cuSPARSELt wants M % 16 == 0; there the dense GEMM is the honest fallback (simulation is slower).
    if rows < min_tokens or (path == "cusparselt" and rows % 16):
        return F.linear(assemble(inputs, activations), weight, bias)
    if path == "cusparselt":
        return cusparselt_linear(inputs, activations, weight, bias, algorithm, prune_compress_24, lora)
    return simulated_sparse_linear(assemble(inputs, activations), weight, bias, n, m, norm_compensation, nm_prune,
                                   lora)  # fmt: skip


def _lora_pair(lora_a: torch.Tensor | None, lora_b: torch.Tensor | None) -> Lora:
    if (lora_a is None) != (lora_b is None):
        raise ValueError("lynx::sparse_linear: lora_a and lora_b must be given together")
    return None if lora_a is None else (lora_a, lora_b)


@sparse_linear.register_fake
def _(inputs, activations, weight, bias, lora_a, lora_b, n, m, norm_compensation, min_tokens, path, algorithm):
    return inputs[0].new_empty((*inputs[0].shape[:-1], weight.shape[0]))


# Gradients (straight-through): the mask and the scale are held constant, so y = s ⊙ (x ⊙ mask)·Wᵀ + b is linear in
# x, W and b. Inference is the target; this exists so that compiling a model whose parameters require grad works.
# The correction adapters are calibrated constants: they pass gradient to x but get none themselves.
def _setup_backward(ctx, inputs, output):
    tensors, activations, weight, bias, lora_a, lora_b, n, m, norm_compensation, min_tokens, _path, _alg = inputs
    ctx.save_for_backward(weight, lora_a, lora_b, *tensors)
    ctx.options = (activations, bias is not None, n, m, norm_compensation, min_tokens)


def _backward(ctx, grad_out):
    weight, lora_a, lora_b, *tensors = ctx.saved_tensors
    activations, has_bias, n, m, norm_compensation, min_tokens = ctx.options
    x = assemble(tensors, activations)
    rows = x.reshape(-1, weight.shape[1])
    grad_rows = grad_out.reshape(-1, weight.shape[0])
    if rows.shape[0] >= min_tokens:
        keep = nm_keep_mask_ref(rows, n, m)
        pruned = torch.where(keep, rows, 0)
        if norm_compensation:
            grad_rows = (grad_rows.float() * norm_scale_ref(rows, keep).unsqueeze(1)).to(grad_rows.dtype)
    else:
        keep, pruned = None, rows
    grad_x = grad_rows @ weight
    if keep is not None:
        grad_x = torch.where(keep, grad_x, 0)
        if lora_a is not None:
            grad_x = grad_x + (grad_out.reshape(-1, weight.shape[0]) @ lora_a) @ lora_b
    grad_weight = grad_rows.t() @ pruned
    grad_bias = grad_out.reshape(-1, weight.shape[0]).sum(0) if has_bias else None
    return (_through_activations(grad_x.reshape(x.shape), tensors, activations), None, grad_weight, grad_bias) \
        + (None,) * 8


def _through_activations(grad_x: torch.Tensor, tensors: list[torch.Tensor], activations: str) -> list[torch.Tensor]:
    """The gradient of x = cat([act(t) for t in tensors], -1), taken back to each of the tensors."""
    grads = grad_x.split([tensor.shape[-1] for tensor in tensors], dim=-1)
    return [grad if name == "none" else
            torch.ops.aten.gelu_backward(grad, tensor, approximate=GELU_APPROXIMATE[name])
            for grad, tensor, name in zip(grads, tensors, activations.split(","))]  # fmt: skip


sparse_linear.register_autograd(_backward, setup_context=_setup_backward)

"""torchao's float8 linears, as lynx takes them: recognising their weights, and running them dense.

A transformer quantized with torchao's float8 dynamic-activation / float8-weight config (``quantize_(model,
Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))``, or diffusers' ``TorchAoConfig``) reaches Dynamo's
graph as ordinary linears whose weight parameter is a `torchao.quantization.Float8Tensor`: e4m3 data ``qdata`` (N, K)
and an fp32 ``scale`` per output feature (rowwise, (N, 1)) or for the whole tensor ((1, 1)), plus how to quantize the
activation at run time. lynx reads the two inner tensors (the rewrite passes them to `lynx::float8_sparse_linear`),
so the quantized weight is stored once, as torchao holds it. torchao itself is not imported: a weight is recognised
by its type's name and attributes, so nothing changes for users without it.

The activation is quantized per token whatever torchao's activation granularity (`lynx_compile.fp8` has the order of
operations): rowwise is what torchao's `PerRow` does, and for `PerTensor` it is at least as accurate.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from .folds import FoldSpec, assemble, quantize_fp8
from .fp8 import float8_linear_ref, quantize_rows

FLOAT8_DTYPE = torch.float8_e4m3fn
UNDER_AUTOCAST = "float8 weight under autocast: left to torchao"


class Float8Weight(NamedTuple):
    """A float8 weight as the float8 paths take it."""

    qdata: torch.Tensor  # (N, K) e4m3, as nn.Linear lays out its weight
    scale: torch.Tensor  # (N,) fp32: each output feature's dequantization scale


def is_float8_weight(value: object) -> bool:
    """Whether `value` (a weight's fake value) is a torchao float8 weight, supported or not."""
    return type(value).__name__ == "Float8Tensor" and hasattr(value, "qdata") and hasattr(value, "scale")


def float8_weight_reason(value: object) -> str | None:
    """Why lynx cannot run a linear over this torchao float8 weight, or None where it can."""
    qdata, scale = value.qdata, value.scale
    if qdata.dtype != FLOAT8_DTYPE:
        return f"float8 weight in {str(qdata.dtype).removeprefix('torch.')}: lynx's FP8 kernels take e4m3"
    if qdata.dim() != 2 or scale.numel() not in (1, qdata.shape[0]):
        return f"float8 weight scaled by blocks (scale {tuple(scale.shape)} for {tuple(qdata.shape)}): rowwise or " \
               "tensorwise only"  # fmt: skip
    activation = getattr(value, "act_quant_kwargs", None)
    if activation is None:
        return "float8 weight-only quantization (the activation stays high precision): no FP8 sparse path for it"
    if getattr(activation, "float8_dtype", FLOAT8_DTYPE) != FLOAT8_DTYPE:
        return f"float8 activation in {activation.float8_dtype}: lynx's FP8 kernels take e4m3"
    bounds = {name: getattr(activation, name, None) for name in ("hp_value_lb", "hp_value_ub")}
    if any(bound is not None for bound in bounds.values()):  # torchao clamps each row's max into them for its scale
        given = ", ".join(f"{name}={bound}" for name, bound in bounds.items() if bound is not None)
        return f"float8 activation scale bounded ({given}): lynx's FP8 compressor scales each row by its own maximum"
    return None


def subclass_operand_reason(value: object) -> str:
    """Why a linear over a tensor subclass operand (DTensor, torchao's int8 / int4 weights) stays dense."""
    return f"{type(value).__name__} operand (a tensor subclass: no sparse path for it)"


def weight_kind_reason(weight: torch.Tensor) -> str | None:
    """Why compiling keeps a linear dense for the kind of its weight alone (a float8 weight lynx's FP8 kernels cannot
    take, another tensor subclass), or None: what `calibrate` and `fit_lora` must not measure as sparse."""
    if is_float8_weight(weight):
        return float8_weight_reason(weight)
    return subclass_operand_reason(weight) if is_traceable_wrapper_subclass(weight) else None


def weight_scale_per_row(scale: torch.Tensor, rows: int) -> torch.Tensor:
    """torchao's weight scale, (N, 1) or (1, 1), as one fp32 value per output feature (N,)."""
    scale = scale.reshape(-1).float()
    return scale.expand(rows).contiguous() if scale.numel() == 1 else scale


def quantize_weight(weight: torch.Tensor) -> Float8Weight:
    """A high-precision weight (N, K) as torchao's rowwise float8 holds it (for timing and tests)."""
    qdata, scale = quantize_rows(weight)
    return Float8Weight(qdata.contiguous(), scale.reshape(-1))


def dense_float8_linear(inputs: Sequence[torch.Tensor], fold: FoldSpec, weight: Float8Weight,
                        bias: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
    """Rowwise dynamic FP8, dense, for x = the fold of `inputs` (made on load, as Inductor would fuse a producer
    into torchao's quantization): what a float8 layer runs where lynx keeps it dense at run time, and what the speed
    rule times the float8 sparse paths against. y (leading shape of inputs[0], N) in x's dtype; on the CPU, and for
    sizes `torch._scaled_mm` refuses (K or N not a multiple of 16, no rows), the pure-torch numerics."""
    return dense_float8_linears(inputs, fold, [weight], [bias])[0]


def dense_float8_linears(inputs: Sequence[torch.Tensor], fold: FoldSpec, weights: Sequence[Float8Weight],
                         biases: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:  # fmt: skip
    """`dense_float8_linear` for sibling layers reading one x: x quantized once for all of them, as Inductor runs
    torchao's float8 siblings (their identical quantizations of x are one after AOT's common-subexpression pass)."""
    rows, k = inputs[0].shape[:-1], weights[0].qdata.shape[1]
    x_q = x = None  # each made once, for the members that need it
    outs = []
    for weight, bias in zip(weights, biases):
        if inputs[0].is_cuda and k % 16 == 0 and weight.qdata.shape[0] % 16 == 0 and inputs[0].numel():
            if x_q is None:  # what `torch._scaled_mm` takes
                x_q, x_scale = quantize_fp8(inputs, fold)
            out = torch._scaled_mm(x_q, weight.qdata.t(), scale_a=x_scale[:, None], scale_b=weight.scale[None, :],
                                   bias=bias, out_dtype=inputs[0].dtype, use_fast_accum=True)  # fmt: skip
            outs.append(out.reshape(*rows, -1))
        else:
            x = assemble(inputs, fold) if x is None else x
            outs.append(float8_linear_ref(x, weight.qdata, weight.scale, bias))
    return outs

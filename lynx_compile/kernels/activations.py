"""Pointwise activations a compressor can apply on load: the producer of a sparsified linear's input, fused.

In a DiT the input of the MLP's down projection is GELU(up projection). Unfused, one kernel reads the up projection's
output and writes X = GELU(·) densely, only for the compressor to read X back. The compressor can instead read the
GELU's input and apply it on load (`prune_compress_24(..., activations=...)`), so X is never written.

The activated value is rounded to the input's dtype before pruning, as the unfused kernel's store would round it, so
the pruning sees what an unfused model's X would hold (up to the last fp32 bit of the activation's own formula,
and results below 1e-36 flushed to zero where compiled: `_divide`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .e4m3 import hardware_cast

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

# name → the code the kernels take as a constexpr; GELU's names follow `F.gelu(approximate=...)`
ACTIVATIONS = {"none": 0, "gelu": 1, "gelu_tanh": 2, "silu": 3}
GELU_APPROXIMATE = {"gelu": "none", "gelu_tanh": "tanh"}  # name → `F.gelu`'s (and `gelu_backward`'s) approximate
# code → a bound on |act(x)| for x < 0, as the kernels compute and round it: GELU's values there reach −0.170 (both
# forms), SiLU's −0.278; the margin covers the approximate division and rounding to bf16's coarse steps (the FP8
# compressor takes a row's largest |act(x)| from its largest x only where that is at least this)
NEGATIVE_PEAK = {0: 0.0, 1: 0.25, 2: 0.25, 3: 0.5}


def check_activation(name: str) -> None:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}")


def activation_ref(x: torch.Tensor, name: str) -> torch.Tensor:
    """The activation as torch computes it (fp32 inside, rounded to x's dtype)."""
    check_activation(name)
    if name == "none":
        return x
    if name == "silu":
        return F.silu(x)
    return F.gelu(x, approximate=GELU_APPROXIMATE[name])


def activation_vjp(grad: torch.Tensor, x: torch.Tensor, name: str) -> torch.Tensor:
    """The gradient of `activation_ref(x, name)` given the gradient of its output."""
    check_activation(name)
    if name == "none":
        return grad
    if name == "silu":
        return torch.ops.aten.silu_backward(grad, x)
    return torch.ops.aten.gelu_backward(grad, x, approximate=GELU_APPROXIMATE[name])


# GELU-tanh's exponent −2·u·log2(e), u = sqrt(2/π)·(x + 0.044715·x³), as x·(A + B·x²): two multiplies and an fma
_GELU_TANH_A = -2.0 * math.log2(math.e) * math.sqrt(2.0 / math.pi)
_GELU_TANH_B = _GELU_TANH_A * 0.044715

if triton is not None:
    from triton.language.extra import libdevice

    # Compiled kernels divide by the reciprocal's approximation (2 instructions: `div.approx`) and round pairs of
    # values to 16 bits by one conversion, which the interpreter lacks (`hardware_cast`: what `triton.jit` decided)
    COMPILED = tl.constexpr(hardware_cast())
    _A = tl.constexpr(_GELU_TANH_A)
    _B = tl.constexpr(_GELU_TANH_B)
    _MINUS_LOG2_E = tl.constexpr(-math.log2(math.e))

    @triton.jit
    def _divide(numerator, denominator):
        """numerator / denominator in fp32 within 2 ulp (`div.approx.ftz`; the interpreter's exact division).
        Compiled, a quotient below fp32's normal range (< 2^-126) flushes to ±0, and so does any over a denominator
        past 2^126: the activations' results for |x| < 2^-125 (≈ x/2 there) and SiLU's for x ≤ −87.5 (≈ −5e-37),
        which torch keeps as bf16 values; no kept member or norm changes by more than that."""
        if COMPILED:
            return libdevice.fast_dividef(numerator, denominator)
        else:
            return numerator / denominator

    @triton.jit
    def activation_f32(f, ACTIVATION: tl.constexpr):
        """activation(f) of fp32 f, in fp32, not rounded (`apply_activation` rounds it). GELU-tanh as
        f / (1 + 2^(f·(A + B·f²))), which equals 0.5·f·(1 + tanh(u)) without tanh (missing from the interpreter) and
        without cancellation near u = 0; SiLU as f / (1 + 2^(−f·log2 e)). Each is within a few fp32 ulp of the exact
        formula, far below the bf16/fp16 rounding that follows. GELU-tanh's arithmetic is 7 instructions, 2 of them
        on the special-function unit (written term by term, with `exp`'s range check and the full-range division,
        it was 16–17: the compressors' largest cost where it is folded)."""
        if ACTIVATION == 1:
            f = 0.5 * f * (1.0 + tl.erf(f * 0.7071067811865476))
        elif ACTIVATION == 2:
            f = _divide(f, 1.0 + tl.exp2(f * (_A + _B * (f * f))))
        elif ACTIVATION == 3:
            f = _divide(f, 1.0 + tl.exp2(f * _MINUS_LOG2_E))
        return f

    @triton.jit
    def apply_activation(x, ACTIVATION: tl.constexpr):
        """x (16-bit floats) → activation(x) computed in fp32 (`activation_f32`), rounded back to x's dtype."""
        if ACTIVATION != 0:
            x = activation_f32(x.to(tl.float32), ACTIVATION).to(x.dtype)
        return x

    @triton.jit
    def _activation_kernel(x_ptr, out_ptr, numel, ACTIVATION: tl.constexpr, BLOCK: tl.constexpr):
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + offsets, mask=offsets < numel)
        tl.store(out_ptr + offsets, apply_activation(x, ACTIVATION), mask=offsets < numel)


def activate(x: torch.Tensor, name: str) -> torch.Tensor:
    """`apply_activation` as a kernel of its own: what the compressor computes on load, materialised (for tests)."""
    check_activation(name)
    if triton is None:
        raise RuntimeError("triton is not installed; use activation_ref")
    x = x.contiguous()
    out = torch.empty_like(x)
    block = 1024
    _activation_kernel[(max(1, math.ceil(x.numel() / block)),)](x, out, x.numel(), ACTIVATION=ACTIVATIONS[name],
                                                                 BLOCK=block)  # fmt: skip
    return out

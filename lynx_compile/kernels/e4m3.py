"""Rounding to e4m3 inside Triton kernels, the same bits as torch's `.to(torch.float8_e4m3fn)` after clamping to
±448: the GPU's saturating cast where kernels are compiled, rounding by hand in integer and fp32 arithmetic
(`e4m3_code`) under Triton's interpreter (CPU tests), whose own fp8 cast rounds some values just below a power of two
down by half (127.35 → 64 instead of 128) and turns NaN into 384."""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

E4M3_MAX = 448.0
FP8_DTYPE = torch.float8_e4m3fn
# The least amax a row's quantization is taken at: below ≈ 448 / fp32's max (1.3e-36; a bf16 row may be that small)
# the factor 448 / amax overflowed to inf, and the row's zeros (its pruned members, kept zeros) times inf were NaN.
# A power of two whose 448 / it is finite (1.75 · 2^125) and whose scale it / 448 is a normal fp32 (a subnormal one
# is rounded otherwise by the kernels' division than by torch's multiplication by 1 / 448).
E4M3_LEAST_AMAX = 2.0**-117

if triton is not None:
    _E4M3_MAX = tl.constexpr(E4M3_MAX)  # kernels read globals only as constexprs
    _E4M3_LEAST_AMAX = tl.constexpr(E4M3_LEAST_AMAX)

    @triton.jit
    def row_factors(amax, positive):
        """Per row, (the factor 448 / amax that quantizes it, the dequantization scale amax / 448): both 1 where
        `positive` is False (a zero or NaN amax, as the reference's torch.where), amax taken at least
        `E4M3_LEAST_AMAX`, the factor an IEEE division as torch's."""
        amax = tl.maximum(amax, _E4M3_LEAST_AMAX)
        inverse = tl.where(positive, tl.math.div_rn(_E4M3_MAX + tl.zeros_like(amax), amax), 1.0)
        return inverse, tl.where(positive, amax / _E4M3_MAX, 1.0)

    @triton.jit
    def e4m3_code(y):
        """The e4m3 encoding (int32, 0..255) of y (fp32, |y| ≤ 448 or NaN) rounded to nearest, ties to even. Sign
        and magnitude are handled as integers: a float negation of a rounded zero may lose -0.0's sign once
        compiled, and the interpreter's own fp8 cast misrounds (127.35 → 64, NaN → 384)."""
        bits = y.to(tl.int32, bitcast=True)
        sign = (bits >> 24) & 0x80
        magnitude = (bits & 0x7FFFFFFF).to(tl.float32, bitcast=True)
        exponent = tl.maximum(((bits >> 23) & 0xFF) - 127, -6)  # e4m3's subnormals share the exponent of 2^-6
        ulp = ((exponent - 3 + 127) << 23).to(tl.float32, bitcast=True)  # 3 mantissa bits
        magic = 12582912.0  # 1.5 · 2^23: adding and subtracting it rounds magnitude / ulp (< 2^4) to an integer, RNE
        rounded = ((magnitude / ulp + magic) - magic) * ulp
        rounded_bits = rounded.to(tl.int32, bitcast=True)
        rounded_exponent = ((rounded_bits >> 23) & 0xFF) - 127
        normal = ((rounded_exponent + 7) << 3) | ((rounded_bits >> 20) & 7)
        subnormal = (rounded * 512.0).to(tl.int32)  # multiples of 2^-9 below 2^-6
        code = tl.where(rounded_exponent >= -6, normal, subnormal)
        return sign | tl.where(y != y, 0x7F, code)

    @triton.jit
    def quantize_e4m3(f, inverse, HARDWARE_CAST: tl.constexpr):
        """e4m3 codes (int32) of f · inverse, clamped to ±448 (NaN stays NaN): the GPU's round-to-nearest cast
        (one instruction per two values), or under the interpreter the same rounding by hand. Within a row scaled by
        448 / amax the clamp only matters where that factor overflows to inf (amax below 448 / fp32's max). (Not
        `tl.clamp(..., propagate_nan=ALL)`: compiled by Triton 3.6 it corrupted some values, in some block shapes.)"""
        y = f * inverse[:, None]
        y = tl.where(y != y, y, tl.minimum(tl.maximum(y, -_E4M3_MAX), _E4M3_MAX))
        if HARDWARE_CAST:
            return y.to(tl.float8e4nv).to(tl.uint8, bitcast=True).to(tl.int32)
        return e4m3_code(y)

    @triton.jit
    def quantize_e4m3_pair(lo, hi, inverse, HARDWARE_CAST: tl.constexpr):
        """`quantize_e4m3`'s codes of lo · inverse and hi · inverse in one int32, `lo`'s in bits 0-7 and `hi`'s in
        8-15. Compiled, one PTX `cvt.rn.satfinite.e4m3x2.f32` converts both (the instruction Triton's own cast emits,
        one value a time with a zero beside it), and its saturation is the clamp to ±448 (NaN kept): the same bits
        as the hand clamp, four instructions an element fewer. Only in kernels checked bit for bit on the GPU: in
        the general kernel (`prune_quantize_fp8.py`) Triton 3.6 compiled a clamp-free cast wrong on an H200 (codes
        of other groups' members in the output; benchmarks/RESULTS.md, session 13); the one-pass kernel's is exact.
        Interpreted, `quantize_e4m3` by hand."""
        if HARDWARE_CAST:
            return tl.inline_asm_elementwise(
                "{ .reg .b16 pair; cvt.rn.satfinite.e4m3x2.f32 pair, $2, $1; cvt.u32.u16 $0, pair; }", "=r,f,f",
                [lo * inverse[:, None], hi * inverse[:, None]], dtype=tl.int32, is_pure=True, pack=1)  # fmt: skip
        return quantize_e4m3(lo, inverse, HARDWARE_CAST) | (quantize_e4m3(hi, inverse, HARDWARE_CAST) << 8)


def hardware_cast() -> bool:
    """Whether lynx's kernels run compiled (rounding with the GPU's cast) rather than under Triton's interpreter (CPU
    tests: by hand), as `triton.jit` decided when it defined them (from `TRITON_INTERPRET` or Triton's own setting,
    however either is spelled)."""
    return triton is not None and isinstance(e4m3_code, triton.runtime.JITFunction)

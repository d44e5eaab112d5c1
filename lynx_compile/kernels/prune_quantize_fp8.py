"""Fused 2:4 prune + rowwise FP8 quantization + compress: X (tokens × K, bf16/fp16) → the e4m3 operand of lynx's FP8
sparse GEMM (`csrc/sparse_gemm_sm90.cu` built with LYNX_ELEMENT=2), with the row scale its epilogue applies.

The order of operations is `lynx_compile.fp8`'s: prune x to 2:4 (lynx's rank rule), quantize each pruned row with its
own scale amax(|x̃ᵢ|) / 448, compress in CUTLASS's 8-bit layout (`cutlass_layout.py`); the row scale the kernel
returns is that quantization scale times the norm scale ‖xᵢ‖ / ‖x̃ᵢ‖ where the method compensates. Without pruning
(`quantize_rows_fp8`) the same kernel writes dense e4m3 rows and their scales: the activation side of rowwise FP8
dense, which the speed rule times FP8 sparse against and which runs a float8 layer that falls back to dense.

Where X is its operand as it is, or a folded activation or two-piece concatenation of operands whose rows are
contiguous along K (`Loader.pieces`), `quantize_fp8_single_pass.py` does all of it in one launch and one read of X
from DRAM. Elsewhere (another folded producer, a transposed X), the kernels below: the
scale needs the whole pruned row before any value can be quantized, so X is read twice, each time by a 2-D grid of
small programs (16 rows × one chunk of K, as the bf16 compressor's, so that enough loads are in flight): pass 1
writes each chunk's partial ‖x‖² and amax — of x, not x̃: a group's largest magnitude is always kept, so they are
equal, and pass 1 does no ranking —, a tiny kernel turns them into the rows' factors, pass 2 prunes, quantizes,
stores and writes the partial ‖x̃‖², and a last tiny kernel applies the norm scale to the row scale. (Programs of
16 rows walking K twice, too few to fill the GPU, ran at a tenth of memory speed on the H200; where the one-pass
kernel walks K twice, a program takes a single row.) A folded producer (`Loader`) is applied on
both reads, so x is still never written.

A row is quantized by multiplying it by 448 / amax (one IEEE division per row; a division per element cost more
than the memory traffic), then rounded to e4m3 (`e4m3.py`: the GPU's cast, or by hand under the interpreter), the
same bits as torch's `.to(torch.float8_e4m3fn)`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import quantize_fp8_single_pass as single_pass_kernel
from .cutlass_layout import META_ROWS, TILE_K
from .e4m3 import FP8_DTYPE, hardware_cast
from .grid import cdiv, next_power_of_2
from .nm_prune import NORM_EPS, nm_keep_mask_ref, norm_scale_ref
from .prune_compress_24 import Loader, _operands_and_loader, chunking, cutlass_operand

try:
    import triton
    import triton.language as tl

    from .e4m3 import quantize_e4m3, row_factors
    from .group_words import kept_members
    from .prune_compress_24 import _keep_2_of_4, _load_members, norm_scale_of, store_chunk_metadata
except ImportError:
    triton = None

FP8_K_MULTIPLE = TILE_K[8]  # the FP8 kernel's tile K fixes its metadata atom: K % 128

if triton is not None:

    @triton.jit
    def _statistics_kernel(
        operands, strides, scalars, stats_ptr, M,
        LOAD: tl.constexpr, LOAD_ARGS: tl.constexpr, BLOCK_G: tl.constexpr,
    ):  # fmt: skip
        """Pass 1, one chunk of 16 rows: each row's partial ‖x‖², amax |x| and NaN count into stats (rows, 4, chunks)
        ([1] is pass 2's ‖x̃‖²). No pruning here: a group's largest magnitude is always kept, so amax |x̃| = amax |x|
        (NaN ranks above everything and is kept too)."""
        rows = tl.program_id(0) * 16 + tl.arange(0, 16)
        chunk, n_chunks = tl.program_id(1), tl.num_programs(1)
        x0, x1, x2, x3 = _load_members(operands, strides, scalars, rows, chunk, M, LOAD, LOAD_ARGS, BLOCK_G)
        f0, f1, f2, f3 = x0.to(tl.float32), x1.to(tl.float32), x2.to(tl.float32), x3.to(tl.float32)
        magnitude = tl.maximum(tl.maximum(tl.abs(f0), tl.abs(f1)), tl.maximum(tl.abs(f2), tl.abs(f3)))
        nan = ((f0 != f0) | (f1 != f1) | (f2 != f2) | (f3 != f3)).to(tl.float32)  # max drops NaNs: counted apart
        base = stats_ptr + rows * 4 * n_chunks + chunk
        mask = rows < M
        tl.store(base, tl.sum(f0 * f0 + f1 * f1 + f2 * f2 + f3 * f3, axis=1), mask=mask)
        tl.store(base + 2 * n_chunks, tl.max(magnitude, axis=1), mask=mask)
        tl.store(base + 3 * n_chunks, tl.sum(nan, axis=1), mask=mask)

    @triton.jit
    def _inverse_kernel(stats_ptr, inverse_ptr, scale_ptr, M, n_chunks, BLOCK_M: tl.constexpr,
                        CHUNKS: tl.constexpr):  # fmt: skip
        """Per row: the factor 448 / amax that quantizes it and the dequantization scale amax / 448
        (`e4m3.row_factors`)."""
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        chunks = tl.arange(0, CHUNKS)
        mask = (rows[:, None] < M) & (chunks[None, :] < n_chunks)
        offsets = rows[:, None] * 4 * n_chunks + chunks[None, :]
        amax = tl.max(tl.load(stats_ptr + offsets + 2 * n_chunks, mask=mask, other=0.0), axis=1)
        nan = tl.sum(tl.load(stats_ptr + offsets + 3 * n_chunks, mask=mask, other=0.0), axis=1)
        inverse, scale = row_factors(amax, (amax > 0.0) & (nan == 0.0))
        tl.store(inverse_ptr + rows, inverse, mask=rows < M)
        tl.store(scale_ptr + rows, scale, mask=rows < M)

    @triton.jit
    def _norm_kernel(stats_ptr, scale_ptr, M, n_chunks, eps, BLOCK_M: tl.constexpr, CHUNKS: tl.constexpr):
        """After pass 2: the row scale times the norm scale sqrt(‖x‖² / (‖x̃‖² + eps)) (1 for a non-finite row)."""
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        norm = norm_scale_of(stats_ptr, rows, M, n_chunks, 4 * n_chunks, eps, CHUNKS)
        tl.store(scale_ptr + rows, tl.load(scale_ptr + rows, mask=rows < M, other=1.0) * norm, mask=rows < M)

    @triton.jit
    def _quantize_kernel(
        operands, strides, scalars, inverse_ptr, values_ptr, meta_ptr, stats_ptr, M, K,
        LOAD: tl.constexpr, LOAD_ARGS: tl.constexpr, BLOCK_G: tl.constexpr, PRUNE: tl.constexpr,
        HARDWARE_CAST: tl.constexpr,
    ):  # fmt: skip
        """Pass 2, one chunk of 16 rows (of M rounded up to 64 with PRUNE: the metadata of the padding rows is
        written as empty groups): (prune,) quantize with the row's factor, store. With PRUNE, values (M, K/2) e4m3,
        metadata in CUTLASS's 8-bit layout and the rows' partial ‖x̃‖²; without, values (M, K) e4m3."""
        rows = tl.program_id(0) * 16 + tl.arange(0, 16)
        chunk, n_chunks = tl.program_id(1), tl.num_programs(1)
        inverse = tl.load(inverse_ptr + rows, mask=rows < M, other=1.0)
        x0, x1, x2, x3 = _load_members(operands, strides, scalars, rows, chunk, M, LOAD, LOAD_ARGS, BLOCK_G)
        p0, p1, p2, p3 = x0.to(tl.float32), x1.to(tl.float32), x2.to(tl.float32), x3.to(tl.float32)
        if PRUNE:
            k0, k1, k2, k3 = _keep_2_of_4(p0, p1, p2, p3)
            p0, p1, p2, p3 = tl.where(k0, p0, 0.0), tl.where(k1, p1, 0.0), tl.where(k2, p2, 0.0), tl.where(k3, p3, 0.0)
            tl.store(stats_ptr + rows * 4 * n_chunks + n_chunks + chunk,
                     tl.sum(p0 * p0 + p1 * p1 + p2 * p2 + p3 * p3, axis=1), mask=rows < M)  # fmt: skip
            # stored: the two kept members' codes, as they are (`cutlass_layout.py`)
            lo, lo_value, hi, hi_value = kept_members(k0, k1, k2, k3, p0, p1, p2, p3)
            lo_code = quantize_e4m3(lo_value, inverse, HARDWARE_CAST)
            hi_code = quantize_e4m3(hi_value, inverse, HARDWARE_CAST)
            pairs = tl.reshape(tl.join(lo_code, hi_code), (16, 2 * BLOCK_G))
            cols = chunk * 2 * BLOCK_G + tl.arange(0, 2 * BLOCK_G)
            tl.store(values_ptr + rows[:, None] * (K // 2) + cols[None, :], pairs.to(tl.uint8), mask=rows[:, None] < M)
            store_chunk_metadata(meta_ptr, lo | (hi << 2), rows, chunk, M, K, BLOCK_G, True)
        else:
            c0, c1 = quantize_e4m3(p0, inverse, HARDWARE_CAST), quantize_e4m3(p1, inverse, HARDWARE_CAST)
            c2, c3 = quantize_e4m3(p2, inverse, HARDWARE_CAST), quantize_e4m3(p3, inverse, HARDWARE_CAST)
            # members (0, 2) and (1, 3) joined back as `_load_members` split them: member 2a + b at [a, b]
            tile = tl.reshape(tl.join(tl.join(c0, c2), tl.join(c1, c3)), (16, 4 * BLOCK_G))
            cols = chunk * 4 * BLOCK_G + tl.arange(0, 4 * BLOCK_G)
            tl.store(values_ptr + rows[:, None] * K + cols[None, :], tile.to(tl.uint8), mask=rows[:, None] < M)


def check_fp8_width(k: int) -> None:
    if k % FP8_K_MULTIPLE:
        raise ValueError(f"K={k} is not a multiple of {FP8_K_MULTIPLE} (the FP8 kernel's tile K)")


def prune_quantize_compress_fp8(
    x: torch.Tensor | Sequence[torch.Tensor], loader: Loader | None = None, norm_compensation: bool = True,
    single_pass: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(values M × K/2 e4m3, metadata bytes for M rounded up to 64 rows, the row scale (M,) fp32 the GEMM's epilogue
    applies) for x = `x` or, with a `loader`, x made from the operands as they are loaded (a folded producer).
    `single_pass`: None takes the one-pass kernel wherever it can read X (`quantize_fp8_single_pass.applies`: X
    itself, or an activation or a concatenation of two folded);
    False the general kernels (tests and benchmarks compare the two)."""
    operands, loader = _operands_and_loader(x, loader)
    rows, k = operands[0].shape[0], loader.width
    check_fp8_width(k)
    values, metadata = cutlass_operand(rows, k, FP8_DTYPE, operands[0].device)
    scale = _launch(operands, loader, values, metadata, True, norm_compensation, single_pass)
    return values, metadata, scale


def quantize_rows_fp8(
    x: torch.Tensor | Sequence[torch.Tensor], loader: Loader | None = None, single_pass: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x as e4m3 (M, K), each row's scale amax / 448 (M,) fp32): rowwise dynamic FP8 quantization, dense
    (`single_pass` as for `prune_quantize_compress_fp8`)."""
    operands, loader = _operands_and_loader(x, loader)
    rows, k = operands[0].shape[0], loader.width
    values = torch.empty(rows, k, dtype=FP8_DTYPE, device=operands[0].device)
    scale = _launch(operands, loader, values, values, False, False, single_pass)
    return values, scale


def _launch(operands: list[torch.Tensor], loader: Loader, values: torch.Tensor, metadata: torch.Tensor, prune: bool,
            norm: bool, single_pass: bool | None) -> torch.Tensor:  # fmt: skip
    """The one-pass kernel where it can read X (`quantize_fp8_single_pass.applies`), else the general kernels (row
    statistics, quantization factors, quantize and store, norm scale); the row scale the GEMM applies."""
    head = operands[0]
    if single_pass is not False and single_pass_kernel.applies(operands, loader):
        return single_pass_kernel.launch(operands, loader, values, metadata, prune, norm, hardware_cast())
    if single_pass:
        raise ValueError("the one-pass FP8 kernel cannot read this X (its folded producer, its operands' layout or "
                         "their widths)")
    rows, k = head.shape[0], loader.width
    scale = torch.empty(rows, dtype=torch.float32, device=head.device)
    if rows == 0:
        return scale
    block_g, n_chunks = chunking(loader, paired=prune)
    strides = tuple(stride for tensor in operands for stride in tensor.stride())
    common = dict(LOAD=loader.fn, LOAD_ARGS=loader.args, BLOCK_G=block_g)
    stats = torch.empty(rows, 4, n_chunks, dtype=torch.float32, device=head.device)
    _statistics_kernel[(cdiv(rows, 16), n_chunks)](tuple(operands), strides, loader.scalars, stats, rows,
                                                   **common)  # fmt: skip
    inverse = torch.empty_like(scale)
    reduce = dict(BLOCK_M=64, CHUNKS=next_power_of_2(n_chunks))
    _inverse_kernel[(cdiv(rows, 64),)](stats, inverse, scale, rows, n_chunks, **reduce)
    covered = cdiv(rows, META_ROWS) * META_ROWS if prune else rows
    _quantize_kernel[(cdiv(covered, 16), n_chunks)](tuple(operands), strides, loader.scalars, inverse,
                                                    values.view(torch.uint8), metadata, stats, rows, k,
                                                    PRUNE=prune, HARDWARE_CAST=hardware_cast(),
                                                    **common)  # fmt: skip
    if norm:
        _norm_kernel[(cdiv(rows, 64),)](stats, scale, rows, n_chunks, NORM_EPS, **reduce)
    return scale


# ---- references ---------------------------------------------------------------------------------------------------


def prune_quantize_compress_fp8_ref(
    x: torch.Tensor, norm_compensation: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The operand `prune_quantize_compress_fp8` writes, in pure torch: prune 2:4, quantize each pruned row to e4m3
    with its own scale (`lynx_compile.fp8.quantize_rows`), compress to CUTLASS's 8-bit layout; and the row scale."""
    from ..fp8 import quantize_rows  # here: fp8 builds on the kernels, not the other way round
    from .cutlass_layout import compress_24_ref

    check_fp8_width(x.shape[-1])
    kept = nm_keep_mask_ref(x, 2, 4)
    quantized, quantization_scale = quantize_rows(torch.where(kept, x.float(), 0.0))
    values, metadata = compress_24_ref(quantized, kept)
    norm_scale = norm_scale_ref(x, kept)
    scale = quantization_scale.reshape(-1) * (norm_scale if norm_compensation else 1.0)
    return values, metadata, scale.contiguous()


__all__ = ["prune_quantize_compress_fp8", "prune_quantize_compress_fp8_ref", "quantize_rows_fp8"]

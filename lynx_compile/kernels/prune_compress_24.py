"""Fused 2:4 prune + compress: X (tokens × K) → the compressed operand of x̃ for a sparse GEMM, plus what the norm
scale s needs, in one pass over X.

The sparse GEMMs want their 2:4 operand in their own layouts, which their libraries only produce from an
already-pruned dense matrix (`torch._cslt_compress`, CUTLASS's compressor: yet another pass). This kernel writes the
operand straight from X (or from the inputs of a folded producer, which it applies as it loads them), and the rows'
norm scale s, which the GEMM's epilogue applies. Two layouts, each documented beside its pure-torch reference:
cuSPARSELt's sm_90 layout (`cusparselt_layout.py`: values and metadata in one buffer, shaped as `torch._cslt_compress`
returns it, rows padded to a multiple the caller asks for) and the layout of lynx's CUTLASS GEMM (`cutlass_layout.py`:
values and metadata as two tensors, any M). Only sm_90 layouts are implemented: `layout_supported()` says whether
this GPU has them; elsewhere callers stay dense.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .grid import cdiv, next_power_of_2
from .nm_prune import NORM_EPS

try:
    import triton
    import triton.language as tl

    from .group_words import kept_members
except ImportError:
    triton = None

COMPRESSED_DTYPES = (torch.float16, torch.bfloat16)
K_TILE = 32  # K elements per metadata tile
K_MULTIPLE = 64  # K % 64 == 32 is padded by cuSPARSELt in a way not implemented here
M_TILE = 64  # rows per metadata tile; M is padded to it
CUSPARSELT_LAYOUT, CUTLASS_LAYOUT = 0, 1  # the compressed layouts the kernel writes (`LAYOUT`)
GROUPS_PER_PROGRAM = 64  # 256 K-elements: with 16 rows, 8 KB of bf16 a program


def layout_supported(device: torch.device | None = None) -> bool:
    """True on GPUs whose cuSPARSELt layout this module writes (sm_90: H100, H200)."""
    if not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device) == (9, 0)


def check_compressible(x: torch.Tensor) -> None:
    if x.dim() != 2:
        raise ValueError(f"expected a 2-D activation (tokens, K), got shape {tuple(x.shape)}")
    check_compressible_width(x.dtype, x.shape[1])


def check_compressible_width(dtype: torch.dtype, k: int) -> None:
    if dtype not in COMPRESSED_DTYPES:
        raise ValueError(f"the compressed layout is implemented for {COMPRESSED_DTYPES}, got {dtype}")
    if k % K_MULTIPLE:
        raise ValueError(f"K={k} is not a multiple of {K_MULTIPLE}")


def metadata_bytes(rows: int, k: int) -> int:
    return cdiv(rows, M_TILE) * M_TILE * k // 8


def cutlass_operand(rows: int, k: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """CUTLASS's compressed operand for `rows` rows of X of width `k`, unwritten: values (rows × K/2 of `dtype`) and
    metadata bytes (`metadata_bytes`: rows rounded up to 64)."""
    values = torch.empty((rows, k // 2), dtype=dtype, device=device)
    return values, torch.empty((metadata_bytes(rows, k),), dtype=torch.uint8, device=device)


def compressed_numel(rows: int, k: int) -> int:
    """Elements (of X's dtype) in the compressed buffer: values, then metadata bytes."""
    return rows * k // 2 + metadata_bytes(rows, k) // 2


def padded_rows(rows: int, multiple: int) -> int:
    """`rows` rounded up to a multiple (symbolic row counts welcome)."""
    return (rows + multiple - 1) // multiple * multiple


def compressed_shape(rows: int, k: int) -> tuple[int, int]:
    """The shape `torch._cslt_compress` gives its result, which `torch._cslt_sparse_mm` expects back."""
    return rows, cdiv(compressed_numel(rows, k), torch.sym_max(rows, 1))  # sym_max: no guard on a symbolic M


# ---- Triton kernel ------------------------------------------------------------------------------------------------
#
# One pass over X, as a 2-D grid of small programs (16 rows × 4·BLOCK_G columns) so that enough loads are in flight
# to approach memory speed. Each program prunes and encodes its tile and writes its rows' partial energies ‖x‖²,
# ‖x̃‖² for its column chunk; a tiny second kernel reduces them to the norm scale s, which the GEMM's epilogue
# applies (Inductor fuses it with the bias into the consumer's pointwise kernel). Folding s into the stored values
# instead, as an earlier version did, costs a second read of X, and a second activation where a producer is folded.
# Chunked partial sums keep the summation order fixed: deterministic output.

if triton is not None:

    @triton.jit
    def load_tile(ptr, stride_m, stride_k, rows, start, M, WIDTH: tl.constexpr):
        """Columns start .. start + WIDTH of `rows` of a 2-D tensor; rows ≥ M (the padding up to 64) read as 0."""
        cols = start + tl.arange(0, WIDTH)[None, :]
        mask = (rows[:, None] < M) & (cols >= 0)
        return tl.load(ptr + rows[:, None] * stride_m + cols * stride_k, mask=mask, other=0.0)

    @triton.jit
    def load_rows(operands, strides, scalars, rows, start, M, ARGS: tl.constexpr, WIDTH: tl.constexpr):
        """The default loader: X is the one operand, read as it is."""
        return load_tile(operands[0], strides[0], strides[1], rows, start, M, WIDTH)

    @triton.jit
    def _load_members(operands, strides, scalars, rows, chunk, M, LOAD: tl.constexpr, LOAD_ARGS: tl.constexpr,
                      BLOCK_G: tl.constexpr):  # fmt: skip
        """The chunk's [rows, 4·BLOCK_G] tile of X, as the loader makes it, split into its 4 group members
        ([rows, BLOCK_G] each)."""
        x = LOAD(operands, strides, scalars, rows, chunk * 4 * BLOCK_G, M, LOAD_ARGS, 4 * BLOCK_G)
        even, odd = tl.split(tl.reshape(x, (x.shape[0], BLOCK_G, 2, 2)))  # members (0, 2) and (1, 3)
        x0, x2 = tl.split(even)
        x1, x3 = tl.split(odd)
        return x0, x1, x2, x3

    @triton.jit
    def _beats(a, b):
        """Does magnitude `a` beat the later entry's magnitude `b`? NaN ranks as +inf; a tie goes to `a`."""
        a = tl.where(a != a, float("inf"), a)
        b = tl.where(b != b, float("inf"), b)
        return a >= b

    @triton.jit
    def _keep_2_of_4(f0, f1, f2, f3):
        """lynx's 2:4 rank rule, elementwise over the four members (fp32)."""
        a0, a1, a2, a3 = tl.abs(f0), tl.abs(f1), tl.abs(f2), tl.abs(f3)
        b01, b02, b03 = _beats(a0, a1).to(tl.int32), _beats(a0, a2).to(tl.int32), _beats(a0, a3).to(tl.int32)
        b12, b13, b23 = _beats(a1, a2).to(tl.int32), _beats(a1, a3).to(tl.int32), _beats(a2, a3).to(tl.int32)
        k0 = (3 - b01 - b02 - b03) < 2  # rank = number of entries that beat this one
        k1 = (b01 + 2 - b12 - b13) < 2
        k2 = (b02 + b12 + 1 - b23) < 2
        k3 = (b03 + b13 + b23) < 2
        return k0, k1, k2, k3

    @triton.jit
    def _encode_half(
        operands, strides, scalars, values_ptr, rows, chunk, M, M_STORED, K,
        LOAD: tl.constexpr, LOAD_ARGS: tl.constexpr, BLOCK_G: tl.constexpr, LAYOUT: tl.constexpr,
    ):  # fmt: skip
        """Prune and encode 8 rows of the chunk; store their values; return their metadata nibbles and their partial
        energies (‖x‖², ‖x̃‖² over the chunk)."""
        x0, x1, x2, x3 = _load_members(operands, strides, scalars, rows, chunk, M, LOAD, LOAD_ARGS, BLOCK_G)
        f0, f1, f2, f3 = x0.to(tl.float32), x1.to(tl.float32), x2.to(tl.float32), x3.to(tl.float32)
        k0, k1, k2, k3 = _keep_2_of_4(f0, f1, f2, f3)
        q0, q1, q2, q3 = f0 * f0, f1 * f1, f2 * f2, f3 * f3
        total = tl.sum(q0 + q1 + q2 + q3, axis=1)
        kept = tl.sum(tl.where(k0, q0, 0.0) + tl.where(k1, q1, 0.0) + tl.where(k2, q2, 0.0) + tl.where(k3, q3, 0.0),
                      axis=1)  # fmt: skip
        if LAYOUT == 0:  # CUSPARSELT_LAYOUT: the nonzeros (-0.0 is zero; compared in fp32, as the interpreter
            # compares bf16 by its bits), the free slots the highest unused indices, holding what x̃ has there
            zero = tl.zeros_like(x0)
            v0, v1 = tl.where(k0, x0, zero), tl.where(k1, x1, zero)
            v2, v3 = tl.where(k2, x2, zero), tl.where(k3, x3, zero)
            n0, n1, n2, n3 = k0 & (f0 != 0.0), k1 & (f1 != 0.0), k2 & (f2 != 0.0), k3 & (f3 != 0.0)
            count = n0.to(tl.int32) + n1.to(tl.int32) + n2.to(tl.int32) + n3.to(tl.int32)
            lo = tl.where(n0, 0, tl.where(n1, 1, 2))
            hi = tl.where(n3 | (count < 2), 3, tl.where(n2, 2, 1))
            lo_value = tl.where(lo == 0, v0, tl.where(lo == 1, v1, v2))
            hi_value = tl.where(hi == 3, v3, tl.where(hi == 2, v2, v1))
        else:  # CUTLASS's: the two kept, as they are (`cutlass_layout.py`)
            lo, lo_value, hi, hi_value = kept_members(k0, k1, k2, k3, x0, x1, x2, x3)
        pairs = tl.reshape(tl.join(lo_value, hi_value), (lo_value.shape[0], 2 * BLOCK_G))
        cols = chunk * 2 * BLOCK_G + tl.arange(0, 2 * BLOCK_G)
        mask = (rows[:, None] < M_STORED) & (cols[None, :] < K // 2)  # rows M .. M_STORED: zeros
        tl.store(values_ptr + rows[:, None] * (K // 2) + cols[None, :], pairs, mask=mask)
        return lo | (hi << 2), total, kept

    @triton.jit
    def store_cutlass_metadata(meta_ptr, even, odd, r, g, M, mask, EIGHT_BIT: tl.constexpr):
        """CUTLASS's metadata bytes (`cutlass_layout.metadata_nibble_address`; the atom is 64 × 128 for 8-bit
        elements, EIGHT_BIT): a byte holds groups g (even, nibbles `even`) and g + 1 (`odd`) of row r, stored where
        `mask` (None: everywhere); the padding rows past M, whose zeros the rank rule would keep as (0, 1), are
        empty groups."""
        if EIGHT_BIT:
            address = (g & 31) + (r & 63) * 32 + (r >> 6) * 2048 + (g >> 5) * (tl.cdiv(M, 64) * 64 * 32)
        else:
            address = (g & 3) + ((r >> 3) & 1) * 4 + ((g >> 3) & 1) * 8 + (r & 7) * 16 + ((g >> 2) & 1) * 128 \
                + ((r >> 4) & 3) * 256 + (r >> 6) * 1024 + (g >> 4) * (tl.cdiv(M, 64) * 64 * 16)
        tl.store(meta_ptr + address // 2, tl.where(r < M, even | (odd << 4), 0).to(tl.uint8), mask=mask)

    @triton.jit
    def store_chunk_metadata(meta_ptr, nibbles, rows, chunk, M, K, BLOCK_G: tl.constexpr, EIGHT_BIT: tl.constexpr):
        """`store_cutlass_metadata` of a chunk's nibbles ([rows, BLOCK_G], the general kernels'): 8-bit chunks
        tile K exactly (K % 128), 16-bit ones may run past it."""
        even, odd = tl.split(tl.reshape(nibbles, (nibbles.shape[0], BLOCK_G // 2, 2)))
        g = chunk * BLOCK_G + 2 * tl.arange(0, BLOCK_G // 2)[None, :]
        store_cutlass_metadata(meta_ptr, even, odd, rows[:, None], g, M, None if EIGHT_BIT else g < K // 4, EIGHT_BIT)

    @triton.jit
    def _compress_kernel(
        # X's operands (tuples: pointers, their strides, the loader's run-time ints), then the outputs: values and
        # metadata are two views of one buffer
        operands, strides, scalars, values_ptr, meta_ptr, energy_ptr,
        # sizes: M rows of X, stored as M_STORED ≥ M rows (the GEMM's row multiple; the padding is zeros)
        M, M_STORED, K,
        # meta-parameters: the loader that makes X's tiles from the operands, and its constants; the layout
        LOAD: tl.constexpr, LOAD_ARGS: tl.constexpr, BLOCK_G: tl.constexpr, LAYOUT: tl.constexpr,
    ):  # fmt: skip
        # In cuSPARSELt's layout rows r and r + 8 share each metadata byte (low and high nibble): a program takes 16
        # rows as two halves of 8 and writes whole bytes (CUTLASS's pairs groups of one row instead). The grid covers
        # M rounded up to 64: padding rows load as zeros and come out as empty groups, as both libraries write them.
        chunk = tl.program_id(1)
        n_chunks = tl.num_programs(1)
        rows_lo = tl.program_id(0) * 16 + tl.arange(0, 8)
        rows_hi = rows_lo + 8
        nibble_lo, total_lo, kept_lo = _encode_half(operands, strides, scalars, values_ptr, rows_lo, chunk, M,
                                                    M_STORED, K, LOAD, LOAD_ARGS, BLOCK_G, LAYOUT)  # fmt: skip
        nibble_hi, total_hi, kept_hi = _encode_half(operands, strides, scalars, values_ptr, rows_hi, chunk, M,
                                                    M_STORED, K, LOAD, LOAD_ARGS, BLOCK_G, LAYOUT)  # fmt: skip

        if LAYOUT == 0:  # CUSPARSELT_LAYOUT
            r = rows_lo[:, None]
            g = chunk * BLOCK_G + tl.arange(0, BLOCK_G)[None, :]
            address = ((r // 64) * (K // 32) + g // 8) * 512 + (r & 7) * 16 + ((r >> 4) & 3) * 128 + (g & 3) * 4 \
                + ((g >> 2) & 1) * 2
            tl.store(meta_ptr + address // 2, (nibble_lo | (nibble_hi << 4)).to(tl.uint8), mask=g < K // 4)
        else:
            store_chunk_metadata(meta_ptr, nibble_lo, rows_lo, chunk, M_STORED, K, BLOCK_G, False)
            store_chunk_metadata(meta_ptr, nibble_hi, rows_hi, chunk, M_STORED, K, BLOCK_G, False)
        # energies: (rows, 2, n_chunks), ‖x‖² then ‖x̃‖²
        tl.store(energy_ptr + rows_lo * 2 * n_chunks + chunk, total_lo, mask=rows_lo < M)
        tl.store(energy_ptr + (rows_lo * 2 + 1) * n_chunks + chunk, kept_lo, mask=rows_lo < M)
        tl.store(energy_ptr + rows_hi * 2 * n_chunks + chunk, total_hi, mask=rows_hi < M)
        tl.store(energy_ptr + (rows_hi * 2 + 1) * n_chunks + chunk, kept_hi, mask=rows_hi < M)

    @triton.jit
    def norm_scale_of(energy_ptr, rows, M, n_chunks, row_stride, eps, CHUNKS: tl.constexpr):
        """s = sqrt(‖x‖² / (‖x̃‖² + eps)) of `rows` from their partial energies: ‖x‖² of each chunk at
        energy_ptr + row · row_stride + chunk, ‖x̃‖² n_chunks further on (CHUNKS: n_chunks rounded up to a power of
        two); 1 for a non-finite row."""
        chunks = tl.arange(0, CHUNKS)
        mask = (rows[:, None] < M) & (chunks[None, :] < n_chunks)
        offsets = rows[:, None] * row_stride + chunks[None, :]
        total = tl.sum(tl.load(energy_ptr + offsets, mask=mask, other=0.0), axis=1)
        kept = tl.sum(tl.load(energy_ptr + offsets + n_chunks, mask=mask, other=0.0), axis=1)
        return tl.where(total - total == 0.0, tl.sqrt(total / (kept + eps)), 1.0)

    @triton.jit
    def _row_scale_kernel(energy_ptr, scale_ptr, M, n_chunks, eps, BLOCK_M: tl.constexpr, CHUNKS: tl.constexpr):
        """s per row from its partial energies."""
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        scale = norm_scale_of(energy_ptr, rows, M, n_chunks, 2 * n_chunks, eps, CHUNKS)
        tl.store(scale_ptr + rows, scale, mask=rows < M)


    @triton.jit
    def _written_out_kernel(operands, strides, scalars, out_ptr, M, K, LOAD: tl.constexpr, LOAD_ARGS: tl.constexpr,
                            BLOCK_G: tl.constexpr):  # fmt: skip
        """X as the compressor loads it, stored densely: the tiles `_compress_kernel` would prune."""
        rows = tl.program_id(0) * 16 + tl.arange(0, 16)
        start = tl.program_id(1) * 4 * BLOCK_G
        x = LOAD(operands, strides, scalars, rows, start, M, LOAD_ARGS, 4 * BLOCK_G)
        cols = start + tl.arange(0, 4 * BLOCK_G)[None, :]
        tl.store(out_ptr + rows[:, None] * K + cols, x, mask=(rows[:, None] < M) & (cols < K))

else:  # no Triton (it ships for Linux only): the references still work, nothing is launched
    load_tile = load_rows = norm_scale_of = store_cutlass_metadata = store_chunk_metadata = None


@dataclass(frozen=True)
class Loader:
    """How the compressor reads X (tokens × K) from its operands, for X that is never written: `fn` is a
    ``@triton.jit`` function ``(operands, strides, scalars, rows, start, M, ARGS, WIDTH) -> tile`` returning columns
    start .. start + WIDTH of those rows of X in the operands' dtype (rows ≥ M as 0; `load_tile` does that), `args`
    its compile-time constants, `scalars` its run-time ints. A program's chunk of X lies within one of `segments`
    (widths along K summing to K; None: all of K), so a loader may take each chunk from one operand."""

    fn: Any
    width: int  # K
    args: tuple[int, ...] = (0,)
    scalars: tuple[int, ...] = (0,)
    segments: tuple[int, ...] | None = None
    # X = cat(act(operand) for each operand, act in pieces) (`kernels.activations` codes, 0 = as it is), for
    # kernels that read the operands themselves (`quantize_fp8_single_pass`); None: only `fn` knows how X is made
    pieces: tuple[int, ...] | None = None
    # How many leading operands are token rows of X's dtype (None: all); the others (a norm's row statistics, its
    # per-sample scale and shift) are read as `fn` says
    aligned: int | None = None


def prune_compress_24(
    x: torch.Tensor | Sequence[torch.Tensor], loader: Loader | None = None, pad_rows_to: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused 2:4 prune + compress: (x̃'s operand shaped as `torch._cslt_compress` returns it, the per-row norm scale
    s, which the GEMM's epilogue applies).

    `x` is the activation (tokens, K), or, with a `loader`, the 2-D operands (tokens, ·) it makes X from as it loads
    them (a folded producer: `lynx_compile.folds`), so X is pruned without ever being written. The operand holds
    `padded_rows(M, pad_rows_to)` rows, the ones past M zero (cuSPARSELt's GEMM wants M % 16 == 0; its output's
    first M rows are the layer's, a view). Compare with the references on `as_flat(operand, stored_rows, k)`: the
    slack past `compressed_numel` is left unwritten.
    """
    operands, loader = _operands_and_loader(x, loader)
    rows, k = operands[0].shape[0], loader.width
    stored = padded_rows(rows, pad_rows_to)
    operand = torch.empty(compressed_shape(stored, k), dtype=operands[0].dtype, device=operands[0].device)
    buffer = as_flat(operand, stored, k)
    scale = _compress(operands, loader, buffer[: stored * k // 2], buffer[stored * k // 2 :].view(torch.uint8),
                      stored, CUSPARSELT_LAYOUT)  # fmt: skip
    return operand, scale


def prune_compress_24_cutlass(
    x: torch.Tensor | Sequence[torch.Tensor], loader: Loader | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same prune, in the layout of lynx's CUTLASS sparse GEMM (`cutlass_layout.py`): (values M × K/2, metadata
    bytes for M rounded up to 64 rows, the per-row norm scale s). No row padding: the GEMM takes any M. (Where X is
    an operand or the pieces' activation, `prune_compress_24_single_pass` does this faster; `folds.compress_cutlass`
    picks.)"""
    operands, loader = _operands_and_loader(x, loader)
    rows, k = operands[0].shape[0], loader.width
    chunking(loader, paired=True)  # narrow segments fail before anything is allocated
    values, metadata = cutlass_operand(rows, k, operands[0].dtype, operands[0].device)
    return values, metadata, _compress(operands, loader, values, metadata, rows, CUTLASS_LAYOUT)


def _operands_and_loader(x: torch.Tensor | Sequence[torch.Tensor], loader: Loader | None) -> tuple[list, Loader]:
    if triton is None:
        raise RuntimeError("triton is not installed; use the references")
    operands = [x] if isinstance(x, torch.Tensor) else list(x)
    check_operands(operands, loader.aligned if loader is not None else None)
    if loader is None:
        if len(operands) != 1:
            raise ValueError(f"{len(operands)} operands need a loader that says how X is made of them")
        loader = Loader(load_rows, operands[0].shape[1], pieces=(0,))
    check_compressible_width(operands[0].dtype, loader.width)  # X's width, not the operands': a fold may change it
    return operands, loader


def _compress(operands: list[torch.Tensor], loader: Loader, values: torch.Tensor, metadata: torch.Tensor,
              stored: int, layout: int) -> torch.Tensor:  # fmt: skip
    """Launch the compressor over X's `stored` rows into `values` and `metadata` (uint8) in `layout`; the rows'
    norm scale s."""
    head = operands[0]
    rows, k = head.shape[0], loader.width
    scale = torch.empty(rows, dtype=torch.float32, device=head.device)
    if rows == 0:
        return scale
    block_g, n_chunks = chunking(loader)
    energies = torch.empty(rows, 2, n_chunks, dtype=torch.float32, device=head.device)
    strides = tuple(stride for tensor in operands for stride in tensor.stride())
    _compress_kernel[(cdiv(stored, M_TILE) * (M_TILE // 16), n_chunks)](
        tuple(operands), strides, loader.scalars, values, metadata, energies, rows, stored, k,
        LOAD=loader.fn, LOAD_ARGS=loader.args, BLOCK_G=block_g, LAYOUT=layout,
    )  # fmt: skip
    block_m = 64
    _row_scale_kernel[(cdiv(rows, block_m),)](energies, scale, rows, n_chunks, NORM_EPS, BLOCK_M=block_m,
                                              CHUNKS=next_power_of_2(n_chunks))  # fmt: skip
    return scale


def written_out(operands: Sequence[torch.Tensor], loader: Loader) -> torch.Tensor:
    """X (tokens × K) exactly as the compressor's loader makes it, written out: the reference a folded compressor is
    bit-exact with (its arithmetic, e.g. the interpreter's bf16 rounding, is the loader's own); the loader's
    agreement with the fold's torch reference is a separate, one-rounding-step check."""
    if triton is None:
        raise RuntimeError("triton is not installed")
    check_operands(operands, loader.aligned, compressed=False)
    rows, k = operands[0].shape[0], loader.width
    out = torch.empty(rows, k, dtype=operands[0].dtype, device=operands[0].device)
    if rows:
        block_g, n_chunks = chunking(loader)
        strides = tuple(stride for tensor in operands for stride in tensor.stride())
        _written_out_kernel[(cdiv(rows, 16), n_chunks)](
            tuple(operands), strides, loader.scalars, out, rows, k, LOAD=loader.fn, LOAD_ARGS=loader.args,
            BLOCK_G=block_g,
        )  # fmt: skip
    return out


def chunking(loader: Loader, paired: bool = False) -> tuple[int, int]:
    """(groups of 4 a program takes along K, programs along K) for X as `loader` makes it. `paired`: for CUTLASS's
    metadata, whose bytes hold two groups of a row, so a chunk must take at least two."""
    block_g = groups_per_chunk(loader.segments or (loader.width,))
    if paired and block_g < 2:
        raise ValueError(f"CUTLASS's metadata pairs groups along K: segments {loader.segments} are too narrow")
    return block_g, loader.width // 4 // block_g


def groups_per_chunk(segments: Sequence[int]) -> int:
    """Groups of 4 a program takes along K: the largest power of two ≤ 64 dividing every segment's group count, so
    that no chunk straddles two segments. (64 groups: with 16 rows, 8 KB of bf16 a program.)"""
    block_g = GROUPS_PER_PROGRAM
    while any((width // 4) % block_g for width in segments):
        block_g //= 2
    return block_g


def check_operands(operands: Sequence[torch.Tensor], aligned: int | None = None, compressed: bool = True) -> None:
    """Operands a loader can read: 2-D, on one device, the first `aligned` (None: all) of one token count and dtype,
    that dtype one the compressed layout holds where X is to be `compressed`; a clear error for anything else."""
    if not operands:
        raise ValueError("the compressor needs at least one operand")
    for operand in operands:
        if operand.dim() != 2:
            raise ValueError(f"expected 2-D operands (tokens, K), got shape {tuple(operand.shape)}")
    head = operands[0]
    if any(p.device != head.device for p in operands):
        raise ValueError("the operands must share a device: " + ", ".join(str(p.device) for p in operands))
    if any((p.shape[0], p.dtype) != (head.shape[0], head.dtype) for p in operands[:aligned]):
        raise ValueError("the operands must share token count, dtype and device: "
                         + ", ".join(f"{tuple(p.shape)} {p.dtype} {p.device}" for p in operands))  # fmt: skip
    if compressed and head.dtype not in COMPRESSED_DTYPES:
        raise ValueError(f"the compressed layout is implemented for {COMPRESSED_DTYPES}, got {head.dtype}")


def as_flat(operand: torch.Tensor, rows: int, k: int) -> torch.Tensor:
    """The meaningful prefix of a compressed operand (values then metadata), as a flat view."""
    return operand.reshape(-1)[: compressed_numel(rows, k)]


__all__ = [
    "Loader", "as_flat", "compressed_numel", "compressed_shape", "cutlass_operand", "layout_supported", "padded_rows",
    "prune_compress_24", "prune_compress_24_cutlass",
]  # fmt: skip

"""The 16-bit compressor in one pass and one launch, for lynx's CUTLASS GEMM: prune X 2:4, write CUTLASS's operand
(values M × K/2 and metadata, `cutlass_layout.py`) and the rows' norm scale s, reading X once, as 64-bit words.

The general compressor (`prune_compress_24.py`: any loader, both layouts) is a 2-D grid of programs that each own a
chunk of K, so s needs a second kernel to add the chunks' partial energies; its per-element work (members split out
of a tile by reshapes, ranked by six float comparisons) leaves it compute-bound at a fifth of the memory's speed on
an H200. Here, as in the FP8 one-pass kernel (both are made of `group_words.py`), a program owns whole rows (or
one long row in chunks) and keeps their energies in registers, so s is written by the same launch; a group of four
16-bit floats is one 64-bit word, its members are ranked by integer keys (`kept_masks`) and its two slots are the
two it keeps, as they are (`kept_members`). Same numerics as the general kernel: the same operand bit for bit, s
equal but for the order of the energies' sums.

This kernel is compute-bound too (Nsight Compute at 4608 × 3072, both kernels: SM throughput 73–76%, DRAM 17–19%),
so the gain is what fewer instructions, fewer barriers and a better block shape buy: 27–31% at FLUX's shapes
(benchmarks/RESULTS.md).

It reads what the FP8 kernel reads (X = cat(act(operand), ...) of at most two 16-bit operands, contiguous along K),
the pieces through one activation, or through two where the head piece is whole chunks (`applies`); other folds
take the general kernel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .cutlass_layout import META_ROWS
from .grid import cdiv
from .launcher import Launch
from .nm_prune import NORM_EPS
from .prune_compress_24 import Loader
from .quantize_fp8_single_pass import applies as reads
from .row_blocking import (
    checked_blocks,
    head_chunks,
    pairs_for_pieces,
    piece_activations,
    warps,
    x_arguments,
)

try:
    import triton
    import triton.language as tl

    from .group_words import (
        activated_group, chunk_pairs, group_members, kept_masks, kept_members, load_pairs,
    )
    from .prune_compress_24 import store_cutlass_metadata
except ImportError:
    triton = None

# Pairs of groups a program holds at a time: one row of FLUX's K = 3072 in 3 chunks of 128 (1024 elements, a pair a
# thread) took 20.4 µs at 4608 rows on an H200, chunks of 64 21.0, of 256 25.9, two whole rows of 512 pairs 28.1
# (`benchmarks/bench_compress_cutlass.py`; 128 was best or tied at every K measured).
PAIRS_PER_PROGRAM = 128

if triton is not None:

    @triton.jit
    def _pruned_group(group, head, FP16: tl.constexpr, HEAD: tl.constexpr, TAIL: tl.constexpr, INF: tl.constexpr):
        """A group's two stored slots in one int32 word (slot lo's bits low), its metadata nibble lo | hi << 2, its
        energy ‖x‖² and its kept energy ‖x̃‖² (stored are the two kept, as they are: `cutlass_layout.py`)."""
        # X's bits, stored as they are (a piece read without an activation keeps its NaN payloads)
        group = activated_group(group, head, FP16, HEAD, TAIL)
        f0, f1, f2, f3, m0, m1, m2, m3 = group_members(group, FP16)
        k0, k1, k2, k3 = kept_masks(m0, m1, m2, m3, INF)
        q0, q1, q2, q3 = f0 * f0, f1 * f1, f2 * f2, f3 * f3
        _, q_lo, _, q_hi = kept_members(k0, k1, k2, k3, q0, q1, q2, q3)
        lo, lo_code, hi, hi_code = kept_members(
            k0, k1, k2, k3, group.to(tl.int32) & 0xFFFF, (group >> 16).to(tl.int32) & 0xFFFF,
            (group >> 32).to(tl.int32) & 0xFFFF, (group >> 48).to(tl.int32) & 0xFFFF)  # fmt: skip
        return lo_code | (hi_code << 16), lo | (hi << 2), q0 + q1 + q2 + q3, q_lo + q_hi

    @triton.jit
    def _prune_and_store(even, odd, pairs, live, head, rows, values_ptr, meta_ptr, M, K, FP16: tl.constexpr,
                         HEAD: tl.constexpr, TAIL: tl.constexpr, INF: tl.constexpr):  # fmt: skip
        """Prune and store a chunk's pairs of groups; their (‖x‖², ‖x̃‖²), a pair's each, for the caller to add up."""
        even_word, even_nibble, energy, kept = _pruned_group(even, head, FP16, HEAD, TAIL, INF)
        odd_word, odd_nibble, odd_energy, odd_kept = _pruned_group(odd, head, FP16, HEAD, TAIL, INF)
        # a pair's four stored 16-bit values: one 64-bit word
        pair = even_word.to(tl.uint32, bitcast=True).to(tl.int64) | (odd_word.to(tl.int64) << 32)
        out = values_ptr.to(tl.pointer_type(tl.int64))
        tl.store(out + rows[:, None] * (K // 8) + pairs[None, :], pair, mask=live)
        # the metadata byte of groups 2j (low nibble) and 2j + 1 of one row
        store_cutlass_metadata(meta_ptr, even_nibble, odd_nibble, rows[:, None], 2 * pairs[None, :], M,
                               pairs[None, :] < K // 8, False)  # fmt: skip
        return energy + odd_energy, kept + odd_kept

    @triton.jit
    def _chunk_sums(x, rows, chunk, values_ptr, meta_ptr, M, K, PAIRS: tl.constexpr, TWO: tl.constexpr,
                    FP16: tl.constexpr, HEAD: tl.constexpr, TAIL: tl.constexpr, INF: tl.constexpr):  # fmt: skip
        """Load, prune and store one chunk of the rows; its pairs' (‖x‖², ‖x̃‖²)."""
        pairs, live, head = chunk_pairs(rows, chunk, x[4], M, K, PAIRS)
        even, odd = load_pairs(x, rows, pairs, live, head, TWO)
        return _prune_and_store(even, odd, pairs, live, head, rows, values_ptr, meta_ptr, M, K, FP16, HEAD, TAIL, INF)

    @triton.jit
    def _single_pass_kernel(
        head_ptr, head_stride, tail_ptr, tail_stride, split, values_ptr, meta_ptr, scale_ptr, M, K,
        EPS: tl.constexpr, ROWS: tl.constexpr, PAIRS: tl.constexpr, CHUNKS: tl.constexpr, HEAD: tl.constexpr,
        TAIL: tl.constexpr, FP16: tl.constexpr, TWO: tl.constexpr, HEAD_CHUNKS: tl.constexpr,
    ):  # fmt: skip
        """ROWS whole rows of M rounded up to 64 (the padding rows get empty metadata), in CHUNKS chunks of PAIRS
        pairs of groups: prune, store, and the rows' norm scale. X = cat(act₀(head), act₁(tail)) with (HEAD, TAIL) =
        (act₀, act₁) and TWO; X = act₀(head) without (split = K). HEAD_CHUNKS > 0: the head is that many whole
        chunks, each chunk read through its own piece's activation alone; else each member through both, selected."""
        INF: tl.constexpr = 0x7C00 if FP16 else 0x7F80  # +inf's magnitude bits; NaN's are above
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        x = (head_ptr, head_stride, tail_ptr, tail_stride, split)
        # each thread's partial sums, carried across chunks: the rows' sums across warps (shared memory and
        # barriers) are taken once, not once a chunk
        energy, kept = tl.zeros((ROWS, PAIRS), dtype=tl.float32), tl.zeros((ROWS, PAIRS), dtype=tl.float32)
        if HEAD_CHUNKS > 0:
            for chunk in range(0, HEAD_CHUNKS):
                chunk_energy, chunk_kept = _chunk_sums(x, rows, chunk, values_ptr, meta_ptr, M, K, PAIRS, TWO, FP16,
                                                       HEAD, HEAD, INF)  # fmt: skip
                energy, kept = energy + chunk_energy, kept + chunk_kept
            for chunk in range(HEAD_CHUNKS, CHUNKS):
                chunk_energy, chunk_kept = _chunk_sums(x, rows, chunk, values_ptr, meta_ptr, M, K, PAIRS, TWO, FP16,
                                                       TAIL, TAIL, INF)  # fmt: skip
                energy, kept = energy + chunk_energy, kept + chunk_kept
        else:
            for chunk in range(CHUNKS):
                chunk_energy, chunk_kept = _chunk_sums(x, rows, chunk, values_ptr, meta_ptr, M, K, PAIRS, TWO, FP16,
                                                       HEAD, TAIL, INF)  # fmt: skip
                energy, kept = energy + chunk_energy, kept + chunk_kept
        energy, kept = tl.sum(energy, axis=1), tl.sum(kept, axis=1)
        scale = tl.where(energy - energy == 0.0, tl.sqrt(energy / (kept + EPS)), 1.0)  # 1 for a non-finite row
        tl.store(scale_ptr + rows, scale, mask=rows < M)


def applies(operands: Sequence[torch.Tensor], loader: Loader, traced: bool = False) -> bool:
    """Whether this kernel reads X (`quantize_fp8_single_pass.applies`) and gains by it: two pieces through
    different activations (FLUX's cat(attention, GELU(mlp))) only where the head is whole chunks, so that each chunk
    goes through its own piece's activation (`head_chunks`): at 4608 × (3072 + GELU 12288) 113 µs a chunk at a
    time, 151 with each member through both and selected, 149 for the general kernel's two launches (H200,
    benchmarks/RESULTS.md, session 15)."""
    if not reads(operands, loader, traced):
        return False
    if len(set(loader.pieces)) == 1:  # the common case, on the eager op's every call: no blocking to work out
        return True
    _, pairs, _ = checked_blocks(loader.width, pairs_for_pieces(operands, loader, PAIRS_PER_PROGRAM), None)
    return head_chunks(operands, loader, pairs) > 0


def launch(operands: Sequence[torch.Tensor], loader: Loader, values: torch.Tensor, metadata: torch.Tensor,
           traced: bool = False, **blocking: Any) -> torch.Tensor:  # fmt: skip
    """Run the kernel over X as `loader` makes it of `operands` (`applies`) into `values` (M × K/2, X's dtype) and
    `metadata` (CUTLASS's layout, M rounded up to 64 rows); the rows' norm scale s. `blocking` as `planned` takes
    it; `traced`: record the launch for Inductor (`launcher.py`)."""
    rows = operands[0].shape[0]
    scale = torch.empty(rows, dtype=torch.float32, device=operands[0].device)
    if not traced and rows == 0:
        return scale
    planned(operands, loader, **blocking).run(traced, values_ptr=values, meta_ptr=metadata, scale_ptr=scale)
    return scale


def planned(operands: Sequence[torch.Tensor], loader: Loader, pairs_per_program: int | None = None,
            blocks: tuple[int, int, int] | None = None) -> Launch:  # fmt: skip
    """The kernel's launch over X as `loader` makes it of `operands`, but for its outputs (`values_ptr`, `meta_ptr`,
    `scale_ptr`). A program holds up to `pairs_per_program` pairs of groups at a time (by default
    `PAIRS_PER_PROGRAM`, or fewer where that makes two pieces' head whole chunks: `pairs_for_pieces`), or `blocks`
    as given (rows a program, pairs a chunk, chunks a row: tests and benchmarks)."""
    rows, k = operands[0].shape[0], loader.width
    pairs_per_program = pairs_per_program or pairs_for_pieces(operands, loader, PAIRS_PER_PROGRAM)
    block_rows, pairs, chunks = checked_blocks(k, pairs_per_program, blocks)
    head, tail = piece_activations(loader)
    # EPS a constexpr, not an argument: launching the kernel itself, Inductor types a float argument fp64, and s
    # would round otherwise than in the op
    return Launch(_single_pass_kernel, (cdiv(cdiv(rows, META_ROWS) * META_ROWS, block_rows),), dict(
        **x_arguments(operands, k), M=rows, K=k, EPS=NORM_EPS, ROWS=block_rows, PAIRS=pairs, CHUNKS=chunks,
        HEAD=head, TAIL=tail, FP16=operands[0].dtype == torch.float16, TWO=len(operands) == 2,
        HEAD_CHUNKS=head_chunks(operands, loader, pairs), num_warps=warps(block_rows, pairs),
    ))  # fmt: skip


__all__ = ["applies", "launch", "planned"]

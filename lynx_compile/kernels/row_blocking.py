"""How the one-pass compressors (`quantize_fp8_single_pass.py`, `prune_compress_24_single_pass.py`) block X's rows:
rows a program, pairs of groups (8 elements) a chunk, chunks a row, warps, and how a two-piece X is given to them.
A program owns whole rows, several where a row is short, else one row in chunks, so that a row's statistics (its
largest magnitude, its energies) are reduced inside one program; host code only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .cutlass_layout import META_ROWS
from .grid import cdiv, next_power_of_2
from .prune_compress_24 import Loader

SMALL_ROW_PAIRS = 128  # rows this short are taken whole, several a program, however much of them is padding
# The FP8 kernel's first look at a held row of at most this many pairs of groups takes every statistic (‖x‖² with
# the largest magnitude); a longer one's takes the largest magnitude alone, ‖x‖² then coming with the values, as a
# row read twice does. On an H200 at 4608 rows, every statistic first against the magnitude alone: K = 1152 7.1 µs
# against 7.5, 1536 8.0 against 8.2, 3072 14.6 against 15.0 (their blockings below); K = 4096 20.8 against 20.3,
# 4608 25.3 against 24.4 (5 chunks of 128), Wan's 5120 at 14040 rows 70.8 against 67.9, 8192 39.7 against 35.7:
# the longer the row, the more registers every statistic keeps live through its reduction (RESULTS, session 32)
STATISTICS_FIRST_PAIRS = 384
# pruning a row in several chunks, a thread takes one pair of groups a chunk (warps = pairs / 32). Read twice, the
# chunks are `row_blocks`'; held, the shortest of `HELD_CHUNK_PAIRS` that make at most `held_chunks` chunks (pairs a
# thread) padded at most an eighth of the row (and, for two pieces through different activations, whole chunks of
# the head; 128 × 8 pairs cover any row held, so longer chunks would never be taken). On an H200 at 4608 rows:
# K = 1152 in 5 chunks of 32 7.1 µs against 15.6 in 9 of 16 in one warp (lanes holding the same pairs); K = 3072
# 6 of 64 14.6 against 15.7 in 3 of 128 in 4 warps (12 of 32 15.3); K = 4096 8 of 64 20.7 against 21.8 (session 30).
# Its magnitude alone first, a thread holds up to 10: K = 4608 in 9 of 64 21.6 against 24.4 in 5 of 128, Wan's 5120
# in 10 of 64 65.5 against 67.9 (every statistic first: 28.2 against 25.3, 85.1 against 70.9), K = 8192 8 of 128 35.7
# against 39.9 in 16 of 64. Read twice, K = 12288 in chunks of 256 in 8 warps 62.8 against 64.3 in 4, through GELU
# 76.2–76.4 against 77.1, K = 15360 78.0 against 91.3 (`benchmarks/tune_fp8_compressor.py`, `bench_fp8_sparse.py`;
# RESULTS, sessions 30 and 32)
HELD_CHUNK_PAIRS = (32, 64, 128)
HELD_CHUNKS, HELD_CHUNKS_MAGNITUDE_FIRST = 8, 10
# `row_blocks`' chunks are at least a warp's 32 pairs, one a lane: shorter chunks leave two lanes computing each
# pair. The 16-bit one-pass kernel on an H200 at 4608 rows: K = 1152 in 5 chunks of 32 8.1 µs against 13.1 in 9 of
# 16, K = 1088 8.1 against 13.2 (`benchmarks/bench_compress_cutlass.py --shapes`; RESULTS, session 31)
MIN_CHUNK_PAIRS = 32


def row_blocks(row_pairs: int, pairs_per_program: int) -> tuple[int, int, int]:
    """(rows a program takes, pairs of groups it holds at a time, chunks a row is read in) for rows of `row_pairs`
    pairs: whole rows, several a program, where a row fits a power of two that is small (`SMALL_ROW_PAIRS`) or at
    most a tenth padding; else one row in the largest power-of-two chunks ≤ `pairs_per_program` whose padding past
    the row's end is at most a tenth of it, down to `MIN_CHUNK_PAIRS` — FLUX's K = 3072 (384 pairs): 3 chunks of
    128, not one of 512 with a quarter of its lanes computing padding; Wan's K = 5120 (640 pairs): 5 of 128;
    DiT-XL's 1152 (144 pairs): 5 of 32. (An eighth's bound, as `held_blocks`', was measured 4% slower at Lumina's
    K = 2304, 5 × 64 against 9 × 32, and 15% faster at K = 4160, 9 × 64 against 17 × 32, a width no DiT has.)"""
    padded = next_power_of_2(row_pairs)
    if padded <= pairs_per_program and (padded <= SMALL_ROW_PAIRS or padded - row_pairs <= row_pairs // 10):
        return min(META_ROWS, pairs_per_program // padded), padded, 1
    pairs = min(pairs_per_program, padded)
    while pairs > MIN_CHUNK_PAIRS and cdiv(row_pairs, pairs) * pairs - row_pairs > row_pairs // 10:
        pairs //= 2
    return 1, pairs, cdiv(row_pairs, pairs)


def statistics_first(row_pairs: int) -> bool:
    """Whether the FP8 kernel's first look at a pruned, held row of `row_pairs` pairs of groups takes every statistic,
    not its largest magnitude alone (`STATISTICS_FIRST_PAIRS`; the dense quantizer's held rows always take the
    magnitude first)."""
    return row_pairs <= STATISTICS_FIRST_PAIRS


def held_chunks(row_pairs: int) -> int:
    """The most chunks (pairs a thread) `held_blocks` holds a row of `row_pairs` pairs of groups in."""
    return HELD_CHUNKS if statistics_first(row_pairs) else HELD_CHUNKS_MAGNITUDE_FIRST


def held_blocks(operands: Sequence[torch.Tensor], loader: Loader, held_pairs: int) -> tuple[int, int, int] | None:
    """(1, pairs a chunk, chunks) for a pruned row held in chunks, one pair of groups a thread: the shortest chunks
    of `HELD_CHUNK_PAIRS` that make at most `held_chunks` of them, padded at most an eighth of the row, still held
    (at most `held_pairs` pairs in all), and where two pieces go through different activations the head whole
    chunks; None where none does."""
    row_pairs = loader.width // 8
    head, tail = piece_activations(loader)
    for pairs in HELD_CHUNK_PAIRS:
        chunks = cdiv(row_pairs, pairs)
        if chunks <= held_chunks(row_pairs) and chunks * pairs - row_pairs <= row_pairs // 8 \
                and chunks * pairs <= held_pairs and (head == tail or head_chunks(operands, loader, pairs) > 0):
            return 1, pairs, chunks
    return None


def checked_blocks(k: int, pairs_per_program: int, blocks: tuple[int, int, int] | None) -> tuple[int, int, int]:
    """(rows a program, pairs a chunk, chunks a row) for rows of K elements: `blocks` as given, checked to cover a
    row, or `row_blocks`' choice."""
    block_rows, pairs, chunks = blocks or row_blocks(k // 8, pairs_per_program)
    if chunks * pairs < k // 8 or (chunks > 1 and block_rows != 1) or block_rows > META_ROWS:
        raise ValueError(f"blocks {blocks} do not cover rows of {k // 8} pairs of groups")
    return block_rows, pairs, chunks


def x_arguments(operands: Sequence[torch.Tensor], k: int) -> dict[str, Any]:
    """How the one-pass kernels are given X: the head, its row stride, the tail, its row stride, the split along K."""
    head, tail = operands[0], operands[-1]
    return dict(head_ptr=head, head_stride=head.stride(0), tail_ptr=tail, tail_stride=tail.stride(0),
                split=head.shape[1] if len(operands) == 2 else k)  # fmt: skip


def piece_activations(loader: Loader) -> tuple[int, int]:
    """The head's and the tail's activation codes; one piece: its activation for both."""
    return (loader.pieces * 2)[:2]


def pairs_for_pieces(operands: Sequence[torch.Tensor], loader: Loader, pairs_per_program: int) -> int:
    """`pairs_per_program`, or where two pieces go through different activations the largest power of two below it,
    down to 64, at which the head piece is whole chunks (`head_chunks`), for both one-pass kernels: at 4608 × (3072
    + GELU 12288) the FP8 kernel took 174 µs at chunks of 128 pairs, 225 at 256 (each member through both
    activations; H200, benchmarks/RESULTS.md, session 15)."""
    pairs = pairs_per_program
    while pairs >= 64:
        if head_chunks(operands, loader, pairs):
            return pairs
        pairs //= 2
    return pairs_per_program


def head_chunks(operands: Sequence[torch.Tensor], loader: Loader, pairs: int) -> int:
    """How many chunks of `pairs` pairs of groups the head piece is, where two pieces go through different
    activations and the head is whole chunks (FLUX's 3072 attention columns: three of 128 pairs), so that the
    one-pass kernels read each chunk through its own piece's activation alone; else 0 (one activation, or each
    member through both, selected)."""
    head, tail = piece_activations(loader)
    split = operands[0].shape[1]
    if len(operands) != 2 or head == tail or not isinstance(split, int) or split % (8 * pairs):
        return 0
    return split // (8 * pairs)


def warps(block_rows: int, pairs: int) -> int:
    """A program's warps: 4, more where it holds more than a pair of groups a thread (up to 16), fewer for chunks of
    fewer than 128 pairs (so that no two threads hold the same pair)."""
    held = block_rows * pairs
    return max(1, min(16, max(4, held // 128), held // 32))


__all__ = ["HELD_CHUNKS", "HELD_CHUNKS_MAGNITUDE_FIRST", "HELD_CHUNK_PAIRS", "MIN_CHUNK_PAIRS", "SMALL_ROW_PAIRS",
           "STATISTICS_FIRST_PAIRS", "checked_blocks", "head_chunks", "held_blocks", "held_chunks", "pairs_for_pieces",
           "piece_activations", "row_blocks", "statistics_first", "warps", "x_arguments"]

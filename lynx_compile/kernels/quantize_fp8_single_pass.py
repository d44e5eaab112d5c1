"""The FP8 compressor in one pass: prune 2:4, quantize each pruned row to e4m3 with its own scale, write CUTLASS's
8-bit operand and the row scale — or, without pruning, rowwise dense e4m3 — in one launch, reading X from DRAM once.
X is its operand as it is, or made on load by a folded activation or a concatenation of two operands, each through
its activation (`Loader.pieces`); other loaders take the general kernels.

`prune_quantize_fp8.py` has the general kernels (any loader): three launches and two reads of X, because a program there
owns a chunk of K while the scale needs the whole row. Here a program owns whole rows: as many as fill
`PAIRS_PER_PROGRAM` pairs of groups (`QUANTIZE_PAIRS_PER_PROGRAM` without pruning) where a short row fits, their
statistics reductions inside the program; a row of up to `HELD_PAIRS` pairs (K ≤ 8192) in chunks, all kept in registers;
a longer row is read in chunks twice, the second time from L2. The first look at a row read twice, held without pruning,
or pruned, held and longer than `row_blocking.STATISTICS_FIRST_PAIRS` (K > 3072), takes its largest magnitude alone, and
the second, which quantizes, ‖x‖²: on a long held row a first look at every statistic keeps the members' fp32 values
live through the row's reduction (K = 4608: 111 registers a thread against 72), on a short pruned one it is the fewer
instructions; the dense quantizer needs no ‖x‖², and its largest magnitude alone was 5–12% faster at every held width
timed (K = 1152–8192, RESULTS.md session 33). Where a chunk goes through one activation, the first look takes the
largest value before it: act(largest x) is the row's largest |act(x)| wherever it reaches what act takes below zero
(GELU ≈ −0.17, SiLU ≈ −0.28: `activations.NEGATIVE_PEAK`), so the activation is computed once, in the second look; rows
where it does not reach that, or that hold NaN or ±inf, are read once more through the activation, from L2 (`RAW_MAX`).
Two pieces through different activations (FLUX's cat(attention, GELU(MLP))) go a chunk at a time through their own
activation where the head piece is whole chunks (`head_chunks`; the blocking halves its chunks, down to 64 pairs of
groups, to make it so), else each member through both, selected. The same numerics, bit for bit (the tests run both
kernels against the reference).

It is also leaner per element (33 SASS instructions per element at K = 3072 against the general pass 2's 48.5,
`benchmarks/sass_per_element.py` on Triton 3.6), being made of `group_words.py`: members come out of 64-bit words
by shifts, not by reshaping a tile, and are ranked by integer keys; only the two kept are quantized (the GPU's
saturating cast clamping) and placed in CUTLASS's slots; a pair of groups is stored as one 32-bit word of values and
one metadata byte.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.fx.experimental.symbolic_shapes import statically_known_true

from .activations import NEGATIVE_PEAK
from .cutlass_layout import META_ROWS
from .grid import cdiv
from .launcher import Launch, provably_aligned, traceable
from .nm_prune import NORM_EPS
from .prune_compress_24 import Loader
from .row_blocking import (
    checked_blocks,
    head_chunks,
    held_blocks,
    pairs_for_pieces,
    piece_activations,
    statistics_first,
    warps,
    x_arguments,
)

try:
    import triton
    import triton.language as tl

    from .e4m3 import quantize_e4m3, quantize_e4m3_pair, row_factors
    from .group_words import (
        activated, activated_group, chunk_pairs, group_members, halves, kept_masks, kept_members, load_pairs,
        packed_extremes, packed_max, larger_half_bits, larger_half_value,
    )
    from .prune_compress_24 import store_cutlass_metadata
except ImportError:
    triton = None

# pairs of groups a program holds at a time, pruning (2 K elements) and quantizing only. In 4 warps, four pairs a
# thread made the 2:4 selection's masks outgrow the predicate registers (Triton 3.6's sm_90 code at K = 12288: 33.8
# instructions an element at 512 pairs, 29.9 at 256). On an H200 at 4608 × 12288 in 4 warps: pruning 96.8 µs at 512,
# 80.9 at 256, 86.5 at 128; quantizing only 59.9 at 512, 72.2 at 128 (RESULTS, session 13). A pruned row in chunks
# now takes one pair a thread (`planned`, `row_blocking.held_blocks`)
PAIRS_PER_PROGRAM = 256
QUANTIZE_PAIRS_PER_PROGRAM = 512
# a row in chunks up to this long is kept in registers and read once (8 K elements): longer rows held (K = 12288,
# 15360 in 16 warps) took 123 and 151 µs at 4608 rows on an H200 against 92 and 120 read twice (RESULTS, session 12)
HELD_PAIRS = 1024


if triton is not None:

    @triton.jit
    def _group_codes(group, head, inverse, kept_energy, energy, PRUNE: tl.constexpr, FP16: tl.constexpr,
                     HEAD: tl.constexpr, TAIL: tl.constexpr, INF: tl.constexpr,
                     HARDWARE_CAST: tl.constexpr):  # fmt: skip
        """A group's e4m3 codes after (pruning and) quantizing: with PRUNE, (its two stored codes in one word, its
        metadata nibble, the kept energy plus its own) — only the two kept members are quantized; without, (its four
        codes in one word, 0, the energy); last, `energy` plus the group's ‖x‖² (used where the statistics' read
        left it out, `RAW_MAX`; else dead code)."""
        f0, f1, f2, f3, m0, m1, m2, m3 = group_members(activated_group(group, head, FP16, HEAD, TAIL), FP16)
        energy = energy + f0 * f0 + f1 * f1 + f2 * f2 + f3 * f3
        if PRUNE:
            k0, k1, k2, k3 = kept_masks(m0, m1, m2, m3, INF)
            lo, lo_value, hi, hi_value = kept_members(k0, k1, k2, k3, f0, f1, f2, f3)
            kept_energy += lo_value * lo_value + hi_value * hi_value
            # stored as they are, a kept zero in its own slot (`cutlass_layout.py`): the codes' word, the nibble
            word, nibble = quantize_e4m3_pair(lo_value, hi_value, inverse, HARDWARE_CAST), lo | (hi << 2)
        else:
            # the hand clamp kept: without it this loop ran 17% slower at K = 12288 on an H200 (RESULTS, session 13)
            word = quantize_e4m3(f0, inverse, HARDWARE_CAST) | (quantize_e4m3(f1, inverse, HARDWARE_CAST) << 8) \
                | (quantize_e4m3(f2, inverse, HARDWARE_CAST) << 16) | (quantize_e4m3(f3, inverse, HARDWARE_CAST) << 24)
            nibble = tl.zeros_like(word)
        return word, nibble, kept_energy, energy

    @triton.jit
    def _statistics(even, odd, head, FP16: tl.constexpr, HEAD: tl.constexpr, TAIL: tl.constexpr):
        """Per pair: ‖x‖², and the largest magnitude's bits (amax |x| = amax |x̃|: a group's largest is kept), which
        also tell NaN (above +inf's) where a float max would drop it; the caller reduces them along the row."""
        e0, e1, e2, e3, a0, a1, a2, a3 = group_members(activated_group(even, head, FP16, HEAD, TAIL), FP16)
        o0, o1, o2, o3, b0, b1, b2, b3 = group_members(activated_group(odd, head, FP16, HEAD, TAIL), FP16)
        energy = e0 * e0 + e1 * e1 + e2 * e2 + e3 * e3 + o0 * o0 + o1 * o1 + o2 * o2 + o3 * o3
        top = tl.maximum(tl.maximum(tl.maximum(a0, a1), tl.maximum(a2, a3)),
                         tl.maximum(tl.maximum(b0, b1), tl.maximum(b2, b3)))  # fmt: skip
        return energy, top

    @triton.jit
    def _raw_extremes(even, odd, FP16: tl.constexpr):
        """Per pair, from its words alone (no activation): the largest of its eight values, and the largest
        magnitude's bits (NaN's above +inf's)."""
        a0, a1, m0, m1 = halves(even.to(tl.int32), FP16)
        a2, a3, m2, m3 = halves((even >> 32).to(tl.int32), FP16)
        b0, b1, n0, n1 = halves(odd.to(tl.int32), FP16)
        b2, b3, n2, n3 = halves((odd >> 32).to(tl.int32), FP16)
        high = tl.maximum(tl.maximum(tl.maximum(a0, a1), tl.maximum(a2, a3)),
                          tl.maximum(tl.maximum(b0, b1), tl.maximum(b2, b3)))  # fmt: skip
        magnitude = tl.maximum(tl.maximum(tl.maximum(m0, m1), tl.maximum(m2, m3)),
                               tl.maximum(tl.maximum(n0, n1), tl.maximum(n2, n3)))  # fmt: skip
        return high, magnitude

    @triton.jit
    def _running_max(a, b, PACKED: tl.constexpr, FP16: tl.constexpr, NAN: tl.constexpr):
        """The running maximum `a` with `b`: of values or magnitudes' bits, or with PACKED lane by lane of words
        holding two 16-bit floats each (`packed_max`; NAN for the magnitudes, so that a NaN shows)."""
        if PACKED:
            return packed_max(a, b, FP16, NAN)
        return tl.maximum(a, b)

    @triton.jit
    def _chunk_raw_extremes(even, odd, chunk, top, raw, high_head, high_tail, FP16: tl.constexpr, HEAD: tl.constexpr,
                            TAIL: tl.constexpr, HEAD_CHUNKS: tl.constexpr, PACKED: tl.constexpr):  # fmt: skip
        """The running `RAW_MAX` statistics with chunk `chunk`'s: `top`, the largest magnitude's bits of members
        without an activation; of those with one, before it: `raw`, the largest magnitude's bits, `high_head` and
        `high_tail`, the largest value, by piece (one activation for the row: `high_head`). PACKED: each kept lane
        by lane of words of two 16-bit floats (`packed_extremes`), for the caller to unpack after the row."""
        if PACKED:
            high, magnitude = packed_extremes(even, odd, FP16)
        else:
            high, magnitude = _raw_extremes(even, odd, FP16)
        if HEAD_CHUNKS == 0 or chunk < HEAD_CHUNKS:  # the head piece, or one activation for the whole row
            if HEAD == 0:
                top = _running_max(top, magnitude, PACKED, FP16, True)
            else:
                raw = _running_max(raw, magnitude, PACKED, FP16, True)
                high_head = _running_max(high_head, high, PACKED, FP16, False)
        else:
            if TAIL == 0:
                top = _running_max(top, magnitude, PACKED, FP16, True)
            else:
                raw = _running_max(raw, magnitude, PACKED, FP16, True)
                high_tail = _running_max(high_tail, high, PACKED, FP16, False)
        return top, raw, high_head, high_tail

    @triton.jit
    def _magnitude(top, FP16: tl.constexpr):
        """The fp32 value of 16-bit magnitude bits."""
        if FP16:
            return top.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        return (top << 16).to(tl.float32, bitcast=True)

    @triton.jit
    def _quantize_and_store(even, odd, pairs, live, head, rows, inverse, values_ptr, meta_ptr, M, K,
                            PRUNE: tl.constexpr, FP16: tl.constexpr, HEAD: tl.constexpr, TAIL: tl.constexpr,
                            INF: tl.constexpr, HARDWARE_CAST: tl.constexpr):  # fmt: skip
        """(Prune,) quantize and store the pairs; their kept energy ‖x̃‖² and their energy ‖x‖², a pair's each, for
        the caller to add up."""
        kept, energy = tl.zeros(even.shape, dtype=tl.float32), tl.zeros(even.shape, dtype=tl.float32)
        even_word, even_nibble, kept, energy = _group_codes(even, head, inverse, kept, energy, PRUNE, FP16, HEAD, TAIL,
                                                            INF, HARDWARE_CAST)  # fmt: skip
        odd_word, odd_nibble, kept, energy = _group_codes(odd, head, inverse, kept, energy, PRUNE, FP16, HEAD, TAIL,
                                                          INF, HARDWARE_CAST)  # fmt: skip
        out = values_ptr.to(tl.pointer_type(tl.int32))
        if PRUNE:  # a pair's four stored codes: one word
            tl.store(out + rows[:, None] * (K // 8) + pairs[None, :], even_word | (odd_word << 16), mask=live)
            # the metadata byte of groups 2j (low nibble) and 2j + 1 of one row
            store_cutlass_metadata(meta_ptr, even_nibble, odd_nibble, rows[:, None], 2 * pairs[None, :], M,
                                   pairs[None, :] < K // 8, True)  # fmt: skip
        else:
            columns = pairs[None, :, None] * 2 + tl.arange(0, 2)[None, None, :]
            tl.store(out + rows[:, None, None] * (K // 4) + columns, tl.join(even_word, odd_word),
                     mask=live[:, :, None])
        return kept, energy

    @triton.jit
    def _chunk_statistics(even, odd, head, chunk, FP16: tl.constexpr, HEAD: tl.constexpr, TAIL: tl.constexpr,
                          HEAD_CHUNKS: tl.constexpr):  # fmt: skip
        """`_statistics` of chunk `chunk`: where the head piece is HEAD_CHUNKS (> 0) whole chunks, through the
        chunk's own piece's activation alone, not both selected (`head_chunks`)."""
        if HEAD_CHUNKS == 0:
            energy, top = _statistics(even, odd, head, FP16, HEAD, TAIL)
        elif chunk < HEAD_CHUNKS:
            energy, top = _statistics(even, odd, head, FP16, HEAD, HEAD)
        else:
            energy, top = _statistics(even, odd, head, FP16, TAIL, TAIL)
        return energy, top

    @triton.jit
    def _chunk_first_look(even, odd, head, chunk, energy, top, raw, high_head, high_tail, FP16: tl.constexpr,
                          HEAD: tl.constexpr, TAIL: tl.constexpr, HEAD_CHUNKS: tl.constexpr, RAW_MAX: tl.constexpr,
                          PACKED: tl.constexpr):  # fmt: skip
        """The running first-look statistics with chunk `chunk`'s, the row held or read twice: with RAW_MAX its
        largest magnitude alone (`_chunk_raw_extremes`), else ‖x‖² and the largest magnitude (`_chunk_statistics`)."""
        if RAW_MAX:
            top, raw, high_head, high_tail = _chunk_raw_extremes(even, odd, chunk, top, raw, high_head, high_tail,
                                                                 FP16, HEAD, TAIL, HEAD_CHUNKS, PACKED)  # fmt: skip
        else:
            chunk_energy, chunk_top = _chunk_statistics(even, odd, head, chunk, FP16, HEAD, TAIL, HEAD_CHUNKS)
            energy, top = energy + chunk_energy, tl.maximum(top, chunk_top)
        return energy, top, raw, high_head, high_tail

    @triton.jit
    def _chunk_quantize_and_store(even, odd, pairs, live, head, chunk, rows, inverse, values_ptr, meta_ptr, M, K,
                                  PRUNE: tl.constexpr, FP16: tl.constexpr, HEAD: tl.constexpr, TAIL: tl.constexpr,
                                  HEAD_CHUNKS: tl.constexpr, INF: tl.constexpr,
                                  HARDWARE_CAST: tl.constexpr):  # fmt: skip
        """`_quantize_and_store` of chunk `chunk`, its activation chosen as `_chunk_statistics` chooses it."""
        if HEAD_CHUNKS == 0:
            kept, energy = _quantize_and_store(even, odd, pairs, live, head, rows, inverse, values_ptr, meta_ptr, M, K,
                                               PRUNE, FP16, HEAD, TAIL, INF, HARDWARE_CAST)  # fmt: skip
        elif chunk < HEAD_CHUNKS:
            kept, energy = _quantize_and_store(even, odd, pairs, live, head, rows, inverse, values_ptr, meta_ptr, M, K,
                                               PRUNE, FP16, HEAD, HEAD, INF, HARDWARE_CAST)  # fmt: skip
        else:
            kept, energy = _quantize_and_store(even, odd, pairs, live, head, rows, inverse, values_ptr, meta_ptr, M, K,
                                               PRUNE, FP16, TAIL, TAIL, INF, HARDWARE_CAST)  # fmt: skip
        return kept, energy

    @triton.jit
    def _single_pass_kernel(
        head_ptr, head_stride, tail_ptr, tail_stride, split, values_ptr, meta_ptr, scale_ptr, M, K,
        EPS: tl.constexpr, ROWS: tl.constexpr, PAIRS: tl.constexpr, CHUNKS: tl.constexpr, HELD: tl.constexpr,
        HEAD: tl.constexpr, TAIL: tl.constexpr, PRUNE: tl.constexpr, NORM: tl.constexpr, FP16: tl.constexpr,
        TWO: tl.constexpr, HARDWARE_CAST: tl.constexpr, HEAD_CHUNKS: tl.constexpr, RAW_MAX: tl.constexpr,
        NEGATIVE_PEAK: tl.constexpr, PACKED: tl.constexpr,
    ):  # fmt: skip
        """ROWS whole rows (of M rounded up to 64 with PRUNE, whose padding rows get empty metadata), in CHUNKS
        chunks of PAIRS pairs of groups: statistics, factor, (prune,) quantize, store; the row scale (quantization ×
        norm). HELD: the chunks stay in registers between the statistics and the values (X read once); else each is
        read twice, the second time from L2. X = cat(act₀(head), act₁(tail)) with (HEAD, TAIL) = (act₀, act₁)
        (`kernels.activations` codes) and TWO; X = act₀(head) without (split = K). HEAD_CHUNKS > 0: the head is
        that many whole chunks, each chunk read through its own piece's activation alone. RAW_MAX (one activation a
        chunk, or none): the first look (read, or load of a held row) takes the largest magnitude from the values
        before their activation and no energy, which the second adds up, and with PACKED (compiled, not
        interpreted) keeps its maxima two to a word (`packed_extremes`); NEGATIVE_PEAK bounds |act(x)| for x < 0."""
        INF: tl.constexpr = 0x7C00 if FP16 else 0x7F80  # +inf's magnitude bits; NaN's are above
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        x = (head_ptr, head_stride, tail_ptr, tail_stride, split)
        # statistics and kept energies are carried per thread across chunks and reduced along the rows once (a
        # reduction across warps goes through shared memory and barriers)
        energy, top = tl.zeros((ROWS, PAIRS), dtype=tl.float32), tl.zeros((ROWS, PAIRS), dtype=tl.int32)
        if RAW_MAX and PACKED:  # two lanes a word, from +0.0, +0.0
            raw, high_head, high_tail = tl.zeros_like(top), tl.zeros_like(top), tl.zeros_like(top)
        else:
            raw, high_head, high_tail = tl.zeros_like(top), tl.zeros_like(energy), tl.zeros_like(energy)
        if HELD:
            held = ()
            for chunk in tl.static_range(CHUNKS):
                pairs, live, head = chunk_pairs(rows, chunk, split, M, K, PAIRS)
                even, odd = load_pairs(x, rows, pairs, live, head, TWO)
                energy, top, raw, high_head, high_tail = _chunk_first_look(
                    even, odd, head, chunk, energy, top, raw, high_head, high_tail, FP16, HEAD, TAIL, HEAD_CHUNKS,
                    RAW_MAX, PACKED)  # fmt: skip
                held = held + ((even, odd, pairs, live, head),)
        else:
            for chunk in range(CHUNKS):
                pairs, live, head = chunk_pairs(rows, chunk, split, M, K, PAIRS)
                even, odd = load_pairs(x, rows, pairs, live, head, TWO)
                energy, top, raw, high_head, high_tail = _chunk_first_look(
                    even, odd, head, chunk, energy, top, raw, high_head, high_tail, FP16, HEAD, TAIL, HEAD_CHUNKS,
                    RAW_MAX, PACKED)  # fmt: skip
        if RAW_MAX and PACKED:
            top, raw = larger_half_bits(top), larger_half_bits(raw)
            high_head, high_tail = larger_half_value(high_head, FP16), larger_half_value(high_tail, FP16)
        energy, top = tl.sum(energy, axis=1), tl.max(top, axis=1)
        if RAW_MAX and (HEAD != 0 or TAIL != 0):
            # act(largest value) is the largest |act(x)| of the members at or above zero (act increasing there, and
            # its rounding too), and those below zero reach at most NEGATIVE_PEAK: so where that candidate is at
            # least NEGATIVE_PEAK and no member is NaN or ±inf, it is the row's largest magnitude; elsewhere (rows
            # of small values, non-finite ones, padding) the statistics are read again as the exact rule has them
            if HEAD != 0:
                top = tl.maximum(top, activated(tl.max(high_head, axis=1), HEAD, FP16)[1])
            if TAIL != 0 and HEAD_CHUNKS > 0:
                top = tl.maximum(top, activated(tl.max(high_tail, axis=1), TAIL, FP16)[1])
            candidate_holds = (tl.max(raw, axis=1) < INF) & (_magnitude(top, FP16) >= NEGATIVE_PEAK)
            if tl.min(candidate_holds.to(tl.int32), axis=0) == 0:
                exact = tl.zeros((ROWS, PAIRS), dtype=tl.int32)
                # read again from memory, a held row's too (re-using its registers kept every chunk's activated
                # values live to the stores: 128 registers a thread at K = 3072 against 64)
                for again in range(CHUNKS):  # (not `chunk`: a held row's is a constexpr)
                    pairs, live, head = chunk_pairs(rows, again, split, M, K, PAIRS)
                    even, odd = load_pairs(x, rows, pairs, live, head, TWO)
                    _, chunk_top = _chunk_statistics(even, odd, head, again, FP16, HEAD, TAIL, HEAD_CHUNKS)
                    exact = tl.maximum(exact, chunk_top)
                top = tl.max(exact, axis=1)
        amax = _magnitude(top, FP16)
        inverse, scale = row_factors(amax, (amax > 0.0) & (top <= INF))

        kept, late_energy = tl.zeros((ROWS, PAIRS), dtype=tl.float32), tl.zeros((ROWS, PAIRS), dtype=tl.float32)
        if HELD:
            for chunk in tl.static_range(CHUNKS):
                even, odd, pairs, live, head = held[chunk]
                chunk_kept, chunk_energy = _chunk_quantize_and_store(even, odd, pairs, live, head, chunk, rows,
                                                                     inverse, values_ptr, meta_ptr, M, K, PRUNE, FP16,
                                                                     HEAD, TAIL, HEAD_CHUNKS, INF,
                                                                     HARDWARE_CAST)  # fmt: skip
                kept, late_energy = kept + chunk_kept, late_energy + chunk_energy
        else:
            for chunk in range(CHUNKS):
                pairs, live, head = chunk_pairs(rows, chunk, split, M, K, PAIRS)
                even, odd = load_pairs(x, rows, pairs, live, head, TWO)
                chunk_kept, chunk_energy = _chunk_quantize_and_store(even, odd, pairs, live, head, chunk, rows,
                                                                     inverse, values_ptr, meta_ptr, M, K, PRUNE, FP16,
                                                                     HEAD, TAIL, HEAD_CHUNKS, INF,
                                                                     HARDWARE_CAST)  # fmt: skip
                kept, late_energy = kept + chunk_kept, late_energy + chunk_energy
        if RAW_MAX:  # the statistics' read took no energy
            energy = tl.sum(late_energy, axis=1)
        if PRUNE and NORM:
            kept = tl.sum(kept, axis=1)
            scale *= tl.where(energy - energy == 0.0, tl.sqrt(energy / (kept + EPS)), 1.0)
        tl.store(scale_ptr + rows, scale, mask=rows < M)


def applies(operands: Sequence[torch.Tensor], loader: Loader, traced: bool = False) -> bool:
    """Whether X can be read here: a loader that says X = cat(act(operand), ...) of at most two operands
    (`Loader.pieces`), each of 16-bit floats, contiguous along K, 8-byte aligned, rows a multiple of 4 elements apart
    and widths of whole pairs of groups (8 elements). `traced`: of fake tensors, for every size the graph runs, and
    only where the launch can be recorded (this kernel's, as both one-pass kernels are compiled, not interpreted)."""
    if triton is None or loader.pieces is None or not 1 <= len(loader.pieces) == len(operands) <= 2:
        return False
    if traced:
        if not traceable(_single_pass_kernel):
            return False
        known = statically_known_true  # for every size the graph runs, without a guard
        return all(x.dtype in (torch.bfloat16, torch.float16) and x.dim() == 2 and known(x.shape[1] % 8 == 0)
                   and known(x.stride(1) == 1) and known(x.stride(0) % 4 == 0) and provably_aligned(x, 8)
                   for x in operands)  # fmt: skip
    return all(x.dtype in (torch.bfloat16, torch.float16) and x.dim() == 2 and x.shape[1] % 8 == 0
               and x.stride(1) == 1 and x.stride(0) % 4 == 0 and x.data_ptr() % 8 == 0 for x in operands)  # fmt: skip


def launch(operands: Sequence[torch.Tensor], loader: Loader, values: torch.Tensor, metadata: torch.Tensor, prune: bool,
           norm: bool, hardware_cast: bool, traced: bool = False, **blocking: Any) -> torch.Tensor:  # fmt: skip
    """Run the kernel over X as `loader` makes it of `operands` (`applies`) into `values` (and, with `prune`,
    `metadata`); the row scale. `blocking` as `planned` takes it; `traced`: record the launch for Inductor
    (`launcher.py`)."""
    rows = operands[0].shape[0]
    scale = torch.empty(rows, dtype=torch.float32, device=operands[0].device)
    if not traced and rows == 0:
        return scale
    planned(operands, loader, prune, norm, hardware_cast, **blocking).run(traced, values_ptr=values, meta_ptr=metadata,
                                                                          scale_ptr=scale)  # fmt: skip
    return scale


def planned(operands: Sequence[torch.Tensor], loader: Loader, prune: bool, norm: bool, hardware_cast: bool,
            pairs_per_program: int | None = None, blocks: tuple[int, int, int] | None = None,
            held_pairs: int = HELD_PAIRS, num_warps: int | None = None, raw_max: bool | None = None,
            packed: bool = True, max_registers: int | None = None) -> Launch:  # fmt: skip
    """The kernel's launch over X as `loader` makes it of `operands`, but for its outputs (`values_ptr`, `meta_ptr`,
    `scale_ptr`). A program holds up to `pairs_per_program` pairs of groups at a time (`row_blocks`), or `blocks` as
    given (rows a program, pairs a chunk, chunks a row: tests and benchmarks); pruning, a row held in chunks takes
    `held_blocks`' where it finds some. A row in chunks is kept in registers and read once up to `held_pairs` pairs of
    groups, read twice past that; the first look at a row read twice, held without pruning, or pruned, held and longer
    than `STATISTICS_FIRST_PAIRS`, takes its largest magnitude alone, before any activation, where each chunk goes
    through one activation (`raw_max` None; True: every row so, False: none, every statistic first, through the
    activation: benchmarks), its maxima two to a word where compiled (`packed`; False one a member, as before it:
    benchmarks); `num_warps` as given (benchmarks: the blocking then as `pairs_per_program` or `blocks` make it), else,
    where `planned` blocks a pruned row in chunks itself, one pair of groups a thread a chunk (read twice, or held in
    `held_blocks`'), else as `warps` gives them; `max_registers` caps a thread's registers (Triton's `maxnreg`;
    benchmarks only: Inductor rebuilds a user-defined kernel's config through `config_to_dict`, which keeps `num_warps`
    and `num_stages`, not `maxnreg`, so a compiled model would not run what the speed rule timed)."""
    rows, k = operands[0].shape[0], loader.width
    chosen = pairs_per_program is None and blocks is None and num_warps is None  # a benchmark's own blocking as is
    pairs_per_program = pairs_per_program or pairs_for_pieces(
        operands, loader, PAIRS_PER_PROGRAM if prune else QUANTIZE_PAIRS_PER_PROGRAM)  # fmt: skip
    block_rows, pairs, chunks = checked_blocks(k, pairs_per_program, blocks)
    if chosen and prune and chunks > 1:  # one pair of groups a thread a chunk, read twice or in `held_blocks`'
        read_twice = chunks * pairs > held_pairs
        held_in = None if read_twice else held_blocks(operands, loader, held_pairs)
        if held_in is not None:
            block_rows, pairs, chunks = held_in
        if read_twice or held_in is not None:
            num_warps = max(1, pairs // 32)
    covered = cdiv(rows, META_ROWS) * META_ROWS if prune else rows
    head, tail = piece_activations(loader)
    held = chunks == 1 or chunks * pairs <= held_pairs
    chunked_pieces = head_chunks(operands, loader, pairs)
    # EPS a constexpr, not an argument: launching the kernel itself, Inductor types a float argument fp64, and s
    # would round otherwise than in the op
    return Launch(_single_pass_kernel, (cdiv(covered, block_rows),), dict(
        **x_arguments(operands, k), M=rows, K=k, EPS=NORM_EPS, ROWS=block_rows, PAIRS=pairs, CHUNKS=chunks,
        HELD=held, HEAD=head, TAIL=tail, PRUNE=prune, NORM=norm, FP16=operands[0].dtype == torch.float16,
        TWO=len(operands) == 2, HARDWARE_CAST=hardware_cast, HEAD_CHUNKS=chunked_pieces,
        RAW_MAX=(raw_max is not False) and (head == tail or chunked_pieces > 0)
        and (raw_max or not (held and prune and statistics_first(k // 8))),
        NEGATIVE_PEAK=max(NEGATIVE_PEAK[head], NEGATIVE_PEAK[tail]), PACKED=hardware_cast and packed,
        num_warps=num_warps or warps(block_rows, pairs), **({"maxnreg": max_registers} if max_registers else {}),
    ))  # fmt: skip

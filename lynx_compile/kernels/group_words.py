"""2:4 groups as 64-bit words: the pieces both one-pass compressors (`prune_compress_24_single_pass.py`, 16-bit,
and `quantize_fp8_single_pass.py`, FP8) are made of. A thread loads a pair of groups of four 16-bit floats as two
64-bit words (`load_pairs`), applies a folded activation to a word where X is made on load (`activated_group`),
takes the members out of it by shifts (`group_members`), ranks them by integer keys (`kept_masks`: magnitude bits,
NaN clamped to +inf's, the index to break ties) and takes the two kept, CUTLASS's two slots (`kept_members`).
"""

from __future__ import annotations

try:
    import triton
    import triton.language as tl

    from .activations import COMPILED, activation_f32
except ImportError:
    triton = None

if triton is not None:

    @triton.jit
    def halves(word, FP16: tl.constexpr):
        """The two 16-bit floats of int32 words, as fp32, and their magnitudes' bits (sign cleared)."""
        if FP16:
            low = word.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
            high = (word >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        else:  # bf16 is the top half of an fp32
            low = (word << 16).to(tl.float32, bitcast=True)
            high = (word & -65536).to(tl.float32, bitcast=True)
        return low, high, word & 0x7FFF, (word >> 16) & 0x7FFF

    @triton.jit
    def activated(f, ACTIVATION: tl.constexpr, FP16: tl.constexpr):
        """act(f) of a 16-bit value f held in fp32, as the folds' loaders make it (`apply_activation`: fp32, rounded
        to X's dtype), as fp32, and its magnitude bits."""
        f = activation_f32(f, ACTIVATION)
        x = f.to(tl.float16) if FP16 else f.to(tl.bfloat16)
        return x.to(tl.float32), x.to(tl.int16, bitcast=True).to(tl.int32) & 0x7FFF

    @triton.jit
    def rounded_word(low, high, FP16: tl.constexpr):
        """fp32 `low` and `high` rounded to X's dtype and packed in an int32 word, as `halves` reads it: where
        compiled by one conversion for both (PTX's `cvt.rn.bf16x2.f32` / `.f16x2`: a conversion a value is as slow
        as the special functions', the activations' exponential and reciprocal), the same rounding as two."""
        if COMPILED:
            if FP16:
                return tl.inline_asm_elementwise("cvt.rn.f16x2.f32 $0, $2, $1;", "=r,r,r", [low, high],
                                                 dtype=tl.int32, is_pure=True, pack=1)  # fmt: skip
            return tl.inline_asm_elementwise("cvt.rn.bf16x2.f32 $0, $2, $1;", "=r,r,r", [low, high], dtype=tl.int32,
                                             is_pure=True, pack=1)  # fmt: skip
        else:
            dtype = tl.float16 if FP16 else tl.bfloat16
            low, high = low.to(dtype).to(tl.int16, bitcast=True), high.to(dtype).to(tl.int16, bitcast=True)
            return (low.to(tl.int32) & 0xFFFF) | (high.to(tl.int32) << 16)

    @triton.jit
    def activated_word(word, ACTIVATION: tl.constexpr, FP16: tl.constexpr):
        """An int32 word of two 16-bit members through the activation, as a word (`activated`, two at a time)."""
        low, high, _, _ = halves(word, FP16)
        return rounded_word(activation_f32(low, ACTIVATION), activation_f32(high, ACTIVATION), FP16)

    @triton.jit
    def piece_word(word, head, HEAD: tl.constexpr, TAIL: tl.constexpr, FP16: tl.constexpr):
        """An int32 word of two members through the activation of the piece it lies in (`head`: the first)."""
        if HEAD == TAIL:
            if HEAD != 0:
                word = activated_word(word, HEAD, FP16)
        else:
            word_head, word_tail = word, word
            if HEAD != 0:
                word_head = activated_word(word, HEAD, FP16)
            if TAIL != 0:
                word_tail = activated_word(word, TAIL, FP16)
            word = tl.where(head, word_head, word_tail)
        return word

    @triton.jit
    def activated_group(group, head, FP16: tl.constexpr, HEAD: tl.constexpr, TAIL: tl.constexpr):
        """A group's 64-bit word of four 16-bit members, each through the activation of its piece: X's bits."""
        if HEAD == 0 and TAIL == 0:
            return group
        low = piece_word(group.to(tl.int32), head, HEAD, TAIL, FP16)
        high = piece_word((group >> 32).to(tl.int32), head, HEAD, TAIL, FP16)
        return low.to(tl.uint32, bitcast=True).to(tl.int64) | (high.to(tl.int64) << 32)

    @triton.jit
    def group_members(group, FP16: tl.constexpr):
        """A group's four members (fp32) and their magnitudes' bits, from its 64-bit word."""
        f0, f1, m0, m1 = halves(group.to(tl.int32), FP16)
        f2, f3, m2, m3 = halves((group >> 32).to(tl.int32), FP16)
        return f0, f1, f2, f3, m0, m1, m2, m3

    @triton.jit
    def kept_masks(m0, m1, m2, m3, INF: tl.constexpr):
        """lynx's 2:4 rank rule on magnitude bits (NaN clamped to +inf's): members ranked by the keys
        magnitude · 4 + (3 - index), all distinct, so that a tie goes to the earlier member; the two keys at or above
        the second largest are kept."""
        k0, k1 = tl.minimum(m0, INF) * 4 + 3, tl.minimum(m1, INF) * 4 + 2
        k2, k3 = tl.minimum(m2, INF) * 4 + 1, tl.minimum(m3, INF) * 4
        second = tl.maximum(tl.minimum(tl.maximum(k0, k1), tl.maximum(k2, k3)),
                            tl.maximum(tl.minimum(k0, k1), tl.minimum(k2, k3)))  # fmt: skip
        return k0 >= second, k1 >= second, k2 >= second, k3 >= second

    @triton.jit
    def kept_members(k0, k1, k2, k3, v0, v1, v2, v3):
        """The two members a group keeps (`kept_masks`' k), in index order: (first's index, its v, second's index,
        its v)."""
        lo, lo_v = tl.where(k0, 0, tl.where(k1, 1, 2)), tl.where(k0, v0, tl.where(k1, v1, v2))
        hi, hi_v = tl.where(k3, 3, tl.where(k2, 2, 1)), tl.where(k3, v3, tl.where(k2, v2, v1))
        return lo, lo_v, hi, hi_v

    @triton.jit
    def packed_max(a, b, FP16: tl.constexpr, NAN: tl.constexpr):
        """Lane by lane, the larger of the 16-bit floats `a` and `b` hold there, two to an int32 word: one
        instruction for two (PTX's `max.bf16x2` / `max.f16x2`, sm_80 on; compiled kernels only, not the
        interpreter). Without NAN a NaN loses to a number; with NAN a NaN in either operand wins the lane, as the
        canonical NaN (0x7FFF), whose bits lie above +inf's."""
        if FP16:
            if NAN:
                return tl.inline_asm_elementwise("max.NaN.f16x2 $0, $1, $2;", "=r,r,r", [a, b], dtype=tl.int32,
                                                 is_pure=True, pack=1)  # fmt: skip
            return tl.inline_asm_elementwise("max.f16x2 $0, $1, $2;", "=r,r,r", [a, b], dtype=tl.int32,
                                             is_pure=True, pack=1)  # fmt: skip
        if NAN:
            return tl.inline_asm_elementwise("max.NaN.bf16x2 $0, $1, $2;", "=r,r,r", [a, b], dtype=tl.int32,
                                             is_pure=True, pack=1)  # fmt: skip
        return tl.inline_asm_elementwise("max.bf16x2 $0, $1, $2;", "=r,r,r", [a, b], dtype=tl.int32, is_pure=True,
                                         pack=1)  # fmt: skip

    @triton.jit
    def packed_extremes(even, odd, FP16: tl.constexpr):
        """A pair of groups' running maxima, two to an int32 word (`packed_max`; `larger_half_value` and
        `larger_half_bits` finish them): of its values (NaNs left out: NaN only in a lane all of whose members are)
        and of its magnitudes, the members with their sign cleared, whose order as floats is that of their bits (a
        NaN among them comes out as NaN). Three instructions for two members, where unpacked each member is taken
        out of its word and converted (the first read of a long row, `quantize_fp8_single_pass`)."""
        w0, w1, w2, w3 = even.to(tl.int32), (even >> 32).to(tl.int32), odd.to(tl.int32), (odd >> 32).to(tl.int32)
        high = packed_max(packed_max(w0, w1, FP16, False), packed_max(w2, w3, FP16, False), FP16, False)
        m0, m1, m2, m3 = w0 & 0x7FFF7FFF, w1 & 0x7FFF7FFF, w2 & 0x7FFF7FFF, w3 & 0x7FFF7FFF
        magnitude = packed_max(packed_max(m0, m1, FP16, True), packed_max(m2, m3, FP16, True), FP16, True)
        return high, magnitude

    @triton.jit
    def larger_half_value(word, FP16: tl.constexpr):
        """The larger of the two 16-bit floats of int32 words, as fp32."""
        low, high, _, _ = halves(word, FP16)
        return tl.maximum(low, high)

    @triton.jit
    def larger_half_bits(word):
        """The larger of the two 16-bit magnitudes' bits of int32 words (sign bits clear)."""
        return tl.maximum(word & 0xFFFF, (word >> 16) & 0xFFFF)

    @triton.jit
    def chunk_pairs(rows, chunk, split, M, K, PAIRS: tl.constexpr):
        """Chunk `chunk`'s PAIRS pairs of groups of the rows: (the pairs' indices, which are in X, which lie in the
        head piece: X's columns before `split`). Worked out apart from `load_pairs`, so that where a kernel stores
        depends on no call that takes x's pointers: Inductor's analysis of a recorded launch
        (`torch._higher_order_ops.triton_kernel_wrap`) counts every argument of a call as flowing into its results,
        and took the x a kernel only reads for written (`tests/test_lowered_compressors.py`)."""
        pairs = chunk * PAIRS + tl.arange(0, PAIRS)
        live = (rows[:, None] < M) & (pairs[None, :] < K // 8)
        return pairs, live, pairs[None, :] * 8 < split

    @triton.jit
    def load_pairs(x, rows, pairs, live, head, TWO: tl.constexpr):
        """The pairs of groups `chunk_pairs` gives, as 64-bit words (one a group): (the pairs' even groups, their odd
        groups). `x` is (head pointer, its row stride, tail pointer, its row stride, split): with TWO pieces, X's
        columns before `split` (a multiple of 8) come from the head operand, the rest from the tail (a pair never
        straddles them)."""
        head_ptr, head_stride, tail_ptr, tail_stride, split = x
        lanes = tl.arange(0, 2)[None, None, :]  # groups 2j and 2j + 1
        words = head_ptr.to(tl.pointer_type(tl.int64))  # four 16-bit floats a word: one group
        pair = tl.load(words + rows[:, None, None] * (head_stride // 4) + pairs[None, :, None] * 2 + lanes,
                       mask=(live & head)[:, :, None], other=0)  # fmt: skip
        if TWO:
            words = tail_ptr.to(tl.pointer_type(tl.int64))
            tail = tl.load(words + rows[:, None, None] * (tail_stride // 4) + (pairs[None, :, None] - split // 8) * 2
                           + lanes, mask=(live & ~head)[:, :, None], other=0)  # fmt: skip
            pair = tl.where(head[:, :, None], pair, tail)
        return tl.split(pair)

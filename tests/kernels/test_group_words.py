"""`group_words.packed_extremes`: a pair of groups' largest value and largest magnitude kept two to a 32-bit word
(PTX's max.bf16x2 / max.f16x2, compiled only: the GPU), against the same maxima taken one member at a time; and
`group_words.rounded_word`: two fp32 values rounded to 16 bits by one conversion (PTX's cvt.rn.bf16x2.f32 /
.f16x2.f32), against torch rounding each."""

import math

import pytest
import torch

from lynx_compile.kernels.group_words import larger_half_bits, larger_half_value, packed_extremes, rounded_word

pytestmark = pytest.mark.gpu

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

if triton is not None:

    @triton.jit
    def _extremes_kernel(even_ptr, odd_ptr, high_ptr, magnitude_ptr, N, FP16: tl.constexpr, BLOCK: tl.constexpr):
        index = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        even = tl.load(even_ptr + index, mask=index < N, other=0)
        odd = tl.load(odd_ptr + index, mask=index < N, other=0)
        high, magnitude = packed_extremes(even, odd, FP16)
        tl.store(high_ptr + index, larger_half_value(high, FP16), mask=index < N)
        tl.store(magnitude_ptr + index, larger_half_bits(magnitude), mask=index < N)

    @triton.jit
    def _rounded_kernel(low_ptr, high_ptr, word_ptr, N, FP16: tl.constexpr, BLOCK: tl.constexpr):
        index = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        low = tl.load(low_ptr + index, mask=index < N, other=0.0)
        high = tl.load(high_ptr + index, mask=index < N, other=0.0)
        tl.store(word_ptr + index, rounded_word(low, high, FP16), mask=index < N)


def awkward_members(pairs, dtype):
    """Eight 16-bit floats a pair of groups: random bit patterns (NaNs with any payload, ±inf, subnormals, ±0) and
    ordinary values, some pairs all NaN, all negative, or all zero."""
    generator = torch.Generator().manual_seed(pairs)
    bits = torch.randint(-(2**15), 2**15, (pairs, 8), generator=generator, dtype=torch.int32).to(torch.int16)
    members = bits.view(dtype).clone()
    ordinary = torch.rand(pairs, 1, generator=generator) < 0.5
    members = torch.where(ordinary, torch.randn(pairs, 8, generator=generator).to(dtype), members)
    members[0], members[1], members[2], members[3] = float("nan"), -members[3].abs() - 1, 0.0, -0.0
    members[4, 5], members[5, :4] = float("inf"), float("-inf")
    return members


@pytest.mark.skipif(not torch.cuda.is_available(), reason="PTX: compiled kernels only")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_packed_maxima_equal_the_maxima_taken_one_member_at_a_time(dtype):
    members = awkward_members(4099, dtype)
    words = members.view(torch.int16).contiguous().view(torch.int64).cuda()  # (pairs, 2): a group a word
    even, odd = words[:, 0].contiguous(), words[:, 1].contiguous()
    high = torch.empty(len(words), dtype=torch.float32, device="cuda")
    magnitude = torch.empty(len(words), dtype=torch.int32, device="cuda")
    _extremes_kernel[(triton.cdiv(len(words), 256),)](even, odd, high, magnitude, len(words),
                                                      FP16=dtype == torch.float16, BLOCK=256)  # fmt: skip
    values = members.float()
    nan = values.isnan().any(dim=1)
    # the largest value: NaN members left out (a pair of NaNs only gives NaN)
    largest = torch.where(values.isnan(), -torch.inf, values).max(dim=1).values
    all_nan = values.isnan().all(dim=1)
    high = high.cpu()
    assert torch.equal(high[~all_nan], largest[~all_nan]) and high[all_nan].isnan().all()
    # the largest magnitude's bits: exact without a NaN, above +inf's with one
    infinity = 0x7C00 if dtype == torch.float16 else 0x7F80
    bits = (members.view(torch.int16).int() & 0x7FFF).max(dim=1).values
    magnitude = magnitude.cpu()
    assert torch.equal(magnitude[~nan], bits[~nan]) and (magnitude[nan] > infinity).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="PTX: compiled kernels only")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_word_rounded_by_one_conversion_holds_each_value_rounded_alone(dtype):
    # fp32 bit patterns of every kind (NaN payloads, ±inf, subnormals, past the dtype's range), ordinary values, and
    # values exactly halfway between two neighbours of the dtype (ties: to even)
    generator = torch.Generator().manual_seed(1)
    values = torch.randint(-(2**31), 2**31, (2, 8192), generator=generator, dtype=torch.int64).int().view(torch.float32)
    values[:, :2048] = torch.randn(2, 2048, generator=generator) * 10.0 ** torch.randint(-6, 6, (2, 2048))
    normals = torch.randn(2, 1024, generator=generator).to(dtype).float()  # fp16's normal range, or bf16's
    mantissa = round(-math.log2(torch.finfo(dtype).eps))  # bits: 7 for bf16, 10 for fp16
    halfway = 1 << (23 - mantissa - 1)  # the first fp32 mantissa bit the dtype drops
    values[:, 2048:3072] = (normals.view(torch.int32) | halfway).view(torch.float32)
    values[0, :6] = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e-45])
    word = torch.empty(values.shape[1], dtype=torch.int32, device="cuda")
    low, high = values[0].cuda(), values[1].cuda()
    _rounded_kernel[(triton.cdiv(len(word), 256),)](low, high, word, len(word), FP16=dtype == torch.float16,
                                                    BLOCK=256)  # fmt: skip
    halves = word.cpu().view(torch.int16).view(-1, 2).view(dtype)  # little-endian: `low` in the low half
    expected = values.t().to(dtype)
    nan = expected.isnan()
    assert torch.equal(halves.isnan(), nan)
    assert torch.equal(halves[~nan].view(torch.int16), expected[~nan].view(torch.int16))

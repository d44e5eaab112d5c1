"""The fused 2:4 prune + rowwise e4m3 quantization + compress kernel (and its dense twin) against the pure-torch
references, bit for bit, on awkward inputs."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lynx_compile.fp8 import quantize_rows
from lynx_compile.folds import FoldSpec, compress_fp8, quantize_fp8
from lynx_compile.kernels.activations import activate
from lynx_compile.kernels.cutlass_layout import decompress_24_ref
from lynx_compile.kernels.nm_prune import nm_prune_ref
from lynx_compile.kernels.prune_quantize_fp8 import (
    prune_quantize_compress_fp8,
    prune_quantize_compress_fp8_ref,
    quantize_rows_fp8,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@st.composite
def activations(draw, max_rows=100, max_k_tiles=3):
    rows = draw(st.integers(1, max_rows))
    k = 128 * draw(st.integers(1, max_k_tiles))
    dtype = draw(st.sampled_from([torch.bfloat16, torch.float16]))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    # rows of very different magnitudes (each its own scale), some so small that kept values round to e4m3's
    # subnormals or to zero
    magnitude = 10.0 ** torch.randint(-6, 3, (rows, 1), generator=generator).float()
    x = torch.randn(rows, k, generator=generator) * magnitude
    if draw(st.booleans()):  # exact ties, zeros (-0.0 too) and whole zero rows
        x = torch.randint(-2, 3, (rows, k), generator=generator).float() * draw(st.sampled_from([1.0, -0.0]))
    x = x.to(dtype=dtype, device=DEVICE)
    if draw(st.booleans()):
        x = x.t().contiguous().t()
    return x


def bits(t):
    return t.view(torch.uint8)


@settings(max_examples=30)
@given(activations(), st.booleans())
def test_kernel_matches_reference_bit_for_bit(x, norm_compensation):
    values, metadata, scale = prune_quantize_compress_fp8(x, norm_compensation=norm_compensation)
    ref_values, ref_metadata, ref_scale = prune_quantize_compress_fp8_ref(x, norm_compensation)
    assert values.dtype == torch.float8_e4m3fn and values.shape == (x.shape[0], x.shape[1] // 2)
    assert torch.equal(bits(values), bits(ref_values)) and torch.equal(metadata, ref_metadata)
    # the norm scale sums over K in another order than torch's: equal to the last fp32 bits
    torch.testing.assert_close(scale, ref_scale, rtol=1e-5, atol=0)


@settings(max_examples=30)
@given(activations())
def test_dense_quantization_matches_reference_bit_for_bit(x):
    quantized, scale = quantize_rows_fp8(x)
    ref_quantized, ref_scale = quantize_rows(x)
    assert torch.equal(bits(quantized), bits(ref_quantized)) and torch.equal(scale, ref_scale.reshape(-1))


@settings(max_examples=20)
@given(activations(max_rows=40))
def test_the_operand_dequantizes_to_the_pruned_rows_within_e4m3_precision(x):
    """Without the references' code path: per element, the decompressed e4m3 operand times the row's quantization
    scale is x̃ within half an e4m3 step (2⁻⁴ relative, or half the subnormal step 2⁻⁹ of the scale), zero where x̃
    is, and the scale is amax(|x̃|) / 448."""
    values, metadata, quantization_scale = prune_quantize_compress_fp8(x, norm_compensation=False)
    pruned, _ = nm_prune_ref(x.float(), 2, 4)
    dequantized = decompress_24_ref(values, metadata).float() * quantization_scale[:, None]
    tolerance = torch.maximum(pruned.abs() * 2**-4, quantization_scale[:, None] * 2**-10)
    assert ((dequantized - pruned).abs() <= tolerance * 1.0001).all()
    assert (dequantized[pruned == 0] == 0).all()
    amax = pruned.abs().amax(dim=1)
    assert torch.equal(quantization_scale, torch.where(amax > 0, amax / 448, torch.ones_like(amax)))


@pytest.mark.parametrize("value", [127.35, -31.55, 7.96, 0.0013, -0.0, 448.0, 2**-9 * 0.5, 2**-9 * 0.5001])
def test_rounding_matches_torchs_cast_where_the_interpreters_does_not(value):
    """Values just below a power of two round up across it, ties go to even (2⁻¹⁰ → 0), signs stay (-0.0): row
    [value, 448] fixes the scale to 1."""
    x = torch.tensor([[value, 448.0] + [0.0] * 126], dtype=torch.float32, device=DEVICE).to(torch.bfloat16)
    quantized, _ = quantize_rows_fp8(x)
    assert bits(quantized)[0, 0] == bits(x[:, :1].float().to(torch.float8_e4m3fn))[0, 0]


def test_a_non_finite_row_keeps_its_non_finite_values_to_itself():
    x = torch.randn(8, 128, dtype=torch.bfloat16, device=DEVICE)
    x[2, 5], x[5, 9] = float("nan"), float("inf")
    values, metadata, scale = prune_quantize_compress_fp8(x)
    ref_values, ref_metadata, ref_scale = prune_quantize_compress_fp8_ref(x)
    finite = [0, 1, 3, 4, 6, 7]
    assert torch.equal(bits(values)[finite], bits(ref_values)[finite]) and torch.equal(metadata, ref_metadata)
    torch.testing.assert_close(scale[finite], ref_scale[finite], rtol=1e-5, atol=0)
    assert values[2].float().isnan().any() and values[5].float().isnan().any()  # inf / inf in the row's scale


@settings(max_examples=10)
@given(activations(max_rows=40, max_k_tiles=2), st.sampled_from(["gelu", "gelu_tanh"]))
def test_a_folded_activation_equals_quantizing_its_written_out_output(x, name):
    """The activation fold applied on load (both passes) == the kernel on act(x) written out by the same code."""
    fold = FoldSpec("activation", (name,))
    values, metadata, scale = compress_fp8([x], fold)
    ref_values, ref_metadata, ref_scale = prune_quantize_compress_fp8(activate(x, name))
    assert torch.equal(bits(values), bits(ref_values)) and torch.equal(metadata, ref_metadata)
    assert torch.equal(scale, ref_scale)
    quantized, row_scale = quantize_fp8([x], fold)
    ref_quantized, ref_row_scale = quantize_rows_fp8(activate(x, name))
    assert torch.equal(bits(quantized), bits(ref_quantized)) and torch.equal(row_scale, ref_row_scale)


@pytest.mark.parametrize("shape, dtype, message", [
    ((4, 64), torch.bfloat16, "multiple of 128"),
    ((4, 128), torch.float32, "implemented for"),
    ((4, 2, 128), torch.bfloat16, "2-D"),
])  # fmt: skip
def test_bad_input_is_a_clear_error(shape, dtype, message):
    with pytest.raises(ValueError, match=message):
        prune_quantize_compress_fp8(torch.ones(shape, dtype=dtype, device=DEVICE))


def test_empty_input():
    values, metadata, scale = prune_quantize_compress_fp8(torch.ones(0, 256, dtype=torch.bfloat16, device=DEVICE))
    assert values.shape == (0, 128) and metadata.numel() == 0 and scale.shape == (0,)

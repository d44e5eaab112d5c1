"""The FP8 × 2:4 reference (`lynx_compile.fp8`): prune, then quantize the kept values with the pruned row's own
scale; the GEMM of the e4m3 operands; the norm compensation and the scales after it — on fresh random inputs."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lynx_compile.fp8 import E4M3_MAX, fp8_linear_ref, quantize_rows
from lynx_compile.kernels.nm_prune import nm_prune_ref
from lynx_compile.method import Method, sparse_linear_ref

shapes = st.tuples(st.integers(1, 24), st.integers(1, 16).map(lambda g: 4 * g), st.integers(1, 20))


def operands(rows, k, n, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k, generator=g) * torch.logspace(-2, 1, k)[torch.randperm(k, generator=g)]  # outliers
    return x.to(dtype), (torch.randn(n, k, generator=g) / k**0.5).to(dtype), torch.randn(n, generator=g).to(dtype)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_quantized_rows_use_the_full_range_and_stay_within_e4m3_precision(shape, seed):
    rows, k, _ = shape
    x, _, _ = operands(rows, k, 1, seed)
    x[0] = 0  # an all-zero row
    q, scale = quantize_rows(x)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (rows, 1)
    assert torch.equal(q[0].float(), torch.zeros(k)) and scale[0].item() == 1.0
    nonzero = x.abs().amax(dim=1) > 0
    assert torch.equal(q.float().abs().amax(dim=1)[nonzero], torch.full((int(nonzero.sum()),), E4M3_MAX))
    dequantized = q.float() * scale
    bound = x.abs() / 16 + scale * 2.0**-9  # half an ulp of 3 mantissa bits, or of the smallest subnormal
    assert ((dequantized - x).abs() <= bound + 1e-12).all()
    assert torch.equal(torch.sign(dequantized)[dequantized != 0], torch.sign(x)[dequantized != 0])


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16), norm=st.booleans())
def test_pruning_comes_first_and_the_pruned_rows_scale_quantizes_them(shape, seed, norm):
    rows, k, n = shape
    x, w, b = operands(rows, k, n, seed)
    method = Method(norm_compensation=norm)
    kept, norm_scale = nm_prune_ref(x, 2, 4)
    x_q, x_scale = quantize_rows(kept)
    w_q, w_scale = quantize_rows(w)
    expected = ((x_q.double() * x_scale.double()) @ (w_q.double() * w_scale.double()).t())
    if norm:
        expected = expected * norm_scale.double()[:, None]
    expected = expected + b.double()
    torch.testing.assert_close(fp8_linear_ref(x, w, b, method).double(), expected, rtol=1e-5, atol=1e-5)
    # the pruned row's scale, not the dense row's: the kept values fill the e4m3 range
    assert torch.equal(x_scale, torch.where(kept.abs().amax(1, keepdim=True) > 0,
                                            kept.abs().amax(1, keepdim=True) / E4M3_MAX, 1.0))  # fmt: skip
    assert (x_q.float()[kept == 0] == 0).all()  # what pruning dropped stays zero


def test_fp8_adds_little_to_the_pruning_error_of_a_layer():
    x, w, b = operands(256, 512, 128, seed=0)
    dense = x @ w.t() + b

    def rel(y):
        return ((y - dense).norm() / dense.norm()).item()

    fp8, sparse, both = rel(fp8_linear_ref(x, w, b)), rel(sparse_linear_ref(x, w, b, Method())), rel(
        fp8_linear_ref(x, w, b, Method()))  # fmt: skip
    assert 0 < fp8 < 0.5 * sparse  # e4m3 rowwise: a few percent; 2:4: ~10% even with outlier channels
    assert sparse < both < (sparse**2 + 4 * fp8**2) ** 0.5  # errors add about in quadrature, not in sum


def test_a_row_with_nan_keeps_it_to_itself_and_a_zero_row_gives_the_bias():
    x, w, b = operands(4, 32, 8, seed=1)
    x[1, 5] = float("nan")
    x[2] = 0
    out = fp8_linear_ref(x, w, b, Method())
    assert out[1].isnan().all() and not out[[0, 2, 3]].isnan().any()
    torch.testing.assert_close(out[2], b)


@pytest.mark.parametrize("method", [Method(), None], ids=["sparse", "dense"])
def test_a_finite_row_too_small_for_448_over_its_amax_gives_a_finite_product(method):
    """A bf16 row of amax below 448 / fp32's max (1.3e-36): its factor 448 / amax overflowed to inf, and its zeros
    (pruned members, or a zero of its own) times inf made the whole row NaN. torchao's float8 gives the bias."""
    x, w, b = operands(4, 32, 8, seed=2)
    x[1] = torch.randn(32, generator=torch.Generator().manual_seed(3)) * 1e-37
    x[1, 3] = 0
    x = x.to(torch.bfloat16).float()
    out = fp8_linear_ref(x, w, b, method)
    assert not out.isnan().any()
    torch.testing.assert_close(out[1], x[1] @ w.t() + b, rtol=0, atol=1e-6)


@pytest.mark.skipif(not hasattr(torch, "_scaled_mm"), reason="torch without _scaled_mm")
def test_the_reference_is_what_torchs_fp8_gemm_computes_on_the_same_operands():
    x, w, b = operands(64, 128, 48, seed=2)
    kept, _ = nm_prune_ref(x, 2, 4)
    x_q, x_scale = quantize_rows(kept)
    w_q, w_scale = quantize_rows(w)
    try:
        gemm = torch._scaled_mm(x_q, w_q.t(), scale_a=x_scale, scale_b=w_scale.t(), out_dtype=torch.float32)
    except (RuntimeError, NotImplementedError) as error:  # not every build runs it on the CPU
        pytest.skip(f"torch._scaled_mm on the CPU: {error}")
    reference = fp8_linear_ref(x, w, None, Method(norm_compensation=False))
    torch.testing.assert_close(gemm, reference, rtol=1e-5, atol=1e-5)

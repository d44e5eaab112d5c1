"""The CUTLASS GEMM as a lowered graph calls it (`paths/lowered_gemm.py`): Inductor's generated code calls the extern
kernel directly, with its optional operands in the right places, and computes what the op does. On the CPU the
kernel is replaced by its reference (`cutlass_layout.sparse_mm_ref`) and the graph compiled by Inductor's CPU
backend, which lowers the op the same way; the kernel itself is the GPU suite's (`test_gpu_cutlass.py`)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch._inductor.utils import run_and_get_code

from lynx_compile.kernels import cutlass_gemm
from lynx_compile.kernels.cutlass_layout import compress_24_ref, prune_compress_24_ref, sparse_mm_ref
from lynx_compile.kernels.nm_prune import nm_prune_ref
from lynx_compile.paths import lowered_gemm

CONFIG = "128x256x64_c2x1_coop"
EXTERN_CALL = f"extern_kernels.{lowered_gemm.EXTERN_NAME}("


@pytest.fixture(autouse=True)
def reference_gemm(monkeypatch):
    """The kernel's reference in place of the library call; records the setting each call got."""
    calls = []

    def gemm(out, values, metadata, weight, scale, bias, weight_scale, config, raster, swizzle):
        calls.append((config.name, raster, swizzle))
        out.copy_(sparse_mm_ref(values, metadata, weight, scale, bias, weight_scale))

    monkeypatch.setattr(cutlass_gemm, "sparse_mm_into", gemm)
    lowered_gemm.register()
    return calls


def operands(rows, k, n, dtype, with_scale, with_bias, float8=False):
    x = torch.randn(rows, k, dtype=torch.bfloat16 if float8 else dtype)
    if float8:  # e4m3 values and weight, as the FP8 path gives them: W's per-feature scale, bf16 out
        pruned, scale = nm_prune_ref(x, 2, 4)
        values, metadata = compress_24_ref(pruned.to(torch.float8_e4m3fn))
        weight = torch.randn(n, k).to(torch.float8_e4m3fn)
        weight_scale = torch.rand(n) + 0.5
    else:
        values, metadata, scale = prune_compress_24_ref(x)
        weight, weight_scale = torch.randn(n, k, dtype=dtype) / k**0.5, None
    out_dtype = cutlass_gemm.output_dtype(weight.dtype)
    return (values, metadata, weight, scale.float() if with_scale else None,
            torch.randn(n, dtype=out_dtype) if with_bias else None, weight_scale)  # fmt: skip


@settings(max_examples=25)
@given(rows=st.integers(1, 70), k=st.sampled_from([128, 256, 384]), n=st.sampled_from([8, 24]),
       dtype=st.sampled_from([torch.bfloat16, torch.float16, torch.float8_e4m3fn]), with_scale=st.booleans(),
       with_bias=st.booleans(), raster=st.integers(0, 2), swizzle=st.sampled_from([1, 2, 4]))  # fmt: skip
def test_the_lowered_call_computes_what_the_op_does(rows, k, n, dtype, with_scale, with_bias, raster, swizzle):
    float8 = dtype == torch.float8_e4m3fn
    values, metadata, weight, scale, bias, weight_scale = operands(rows, k, n, dtype, with_scale, with_bias, float8)
    lowered = lowered_gemm.as_lowered(values, metadata, weight, scale, bias, CONFIG, raster, swizzle, weight_scale)
    op = torch.ops.lynx.cutlass_sparse_mm(values, metadata, weight, scale, bias, CONFIG, raster, swizzle,
                                          weight_scale=weight_scale)  # fmt: skip
    # against the reference called with the operands in their places: a mask decoded wrong swaps or drops one
    expected = sparse_mm_ref(values, metadata, weight, scale, bias, weight_scale)
    assert lowered.dtype == op.dtype == expected.dtype and lowered.shape == (rows, n)
    assert torch.equal(lowered, expected) and torch.equal(op, expected)


def layer(values, metadata, weight, scale, bias):
    y = torch.ops.lynx.cutlass_sparse_mm(values, metadata, weight, scale, bias, CONFIG, 1, 2)
    return torch.nn.functional.gelu(y) + 1  # a consumer for Inductor to generate around the call


@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("with_scale,with_bias", [(True, True), (False, True), (True, False)])
def test_inductor_calls_the_extern_kernel_not_the_op(dynamic, with_scale, with_bias, reference_gemm):
    torch._dynamo.reset()
    args = operands(37, 64, 24, torch.bfloat16, with_scale, with_bias)[:5]
    compiled = torch.compile(layer, backend="inductor", dynamic=dynamic, fullgraph=True)
    out, codes = run_and_get_code(compiled, *args)
    code = "\n".join(codes)
    assert EXTERN_CALL in code and "torch.ops.lynx.cutlass_sparse_mm" not in code
    assert torch.allclose(out.float(), layer(*args).float(), rtol=1e-2, atol=1e-2)
    assert reference_gemm[0] == (CONFIG, 1, 2)
    if dynamic:  # another token count through the same graph
        args = operands(5, 64, 24, torch.bfloat16, with_scale, with_bias)[:5]
        assert torch.allclose(compiled(*args).float(), layer(*args).float(), rtol=1e-2, atol=1e-2)


def test_where_the_extern_call_cannot_be_built_the_op_stays(monkeypatch):
    torch._dynamo.reset()

    def moved(*args):
        raise AttributeError("Inductor's IR moved")

    monkeypatch.setattr(lowered_gemm, "_extern_call", moved)
    args = operands(9, 64, 8, torch.float16, True, True)[:5]
    out, codes = run_and_get_code(torch.compile(layer, backend="inductor", fullgraph=True), *args)
    code = "\n".join(codes)
    assert EXTERN_CALL not in code and "torch.ops.lynx.cutlass_sparse_mm" in code
    assert torch.allclose(out.float(), layer(*args).float(), rtol=1e-2, atol=1e-2)


def test_the_extern_kernels_name_is_ours():
    from torch._inductor.select_algorithm import extern_kernels

    assert getattr(extern_kernels, lowered_gemm.EXTERN_NAME) is lowered_gemm.call

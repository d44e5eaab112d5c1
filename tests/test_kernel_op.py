"""`kernel_op`: lynx's hot-path ops registered by schema with one plain kernel, and what torch needs of them (schema
from the type hints, fake tensors for tracing, opcheck, an error where gradients would be lost); lynx's own kernel
ops are registered that way and opcheck passes on the compressor's."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lynx_compile  # noqa: F401 (registers the lynx ops)
from lynx_compile.kernel_op import kernel_op


@kernel_op("lynx::_test_scale_rows")
def scale_rows(x: torch.Tensor, scale: torch.Tensor, shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    return x * scale[:, None] + shift, scale.sum().reshape(1)


@torch.library.register_fake("lynx::_test_scale_rows")
def _(x, scale, shift):
    return torch.empty_like(x), scale.new_empty(1)


@settings(max_examples=20, deadline=None)
@given(rows=st.integers(1, 9), cols=st.integers(1, 9), shift=st.floats(-4, 4), seed=st.integers(0, 2**16))
def test_the_op_runs_the_function(rows, cols, shift, seed):
    generator = torch.Generator().manual_seed(seed)
    x, scale = torch.randn(rows, cols, generator=generator), torch.randn(rows, generator=generator)
    out, total = torch.ops.lynx._test_scale_rows(x, scale, shift)
    expected, expected_total = scale_rows(x, scale, shift)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    torch.testing.assert_close(total, expected_total, rtol=0, atol=0)


def test_the_schema_comes_from_the_type_hints():
    schema = str(torch.ops.lynx._test_scale_rows.default._schema)
    assert schema == "lynx::_test_scale_rows(Tensor x, Tensor scale, float shift) -> (Tensor, Tensor)"


def test_a_compiled_graph_traces_it_through_its_fake_and_calls_it():
    def f(x, scale):
        out, total = torch.ops.lynx._test_scale_rows(x.relu(), scale, 0.5)
        return out.sum(dim=1) + total

    x, scale = torch.randn(5, 3), torch.randn(5)
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, scale), f(x, scale))


def test_opcheck_passes_on_the_kernel_ops():
    x, scale = torch.randn(4, 6), torch.randn(4)
    torch.library.opcheck(torch.ops.lynx._test_scale_rows.default, (x, scale, 1.5))


@pytest.mark.parametrize("name", ["prune_compress_24", "prune_compress_24_cutlass", "cutlass_sparse_mm",
                                  "cslt_rows_mm", "cslt_planned_mm", "prune_quantize_compress_fp8"])  # fmt: skip
def test_lynx_kernel_ops_are_registered_without_a_python_autograd_layer(name):
    op = getattr(torch.ops.lynx, name).default
    assert torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CompositeExplicitAutograd")
    assert not torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "Autograd")  # custom_op would add one


def test_opcheck_passes_on_the_compressor_op():
    x = torch.randn(16, 64, dtype=torch.bfloat16)
    torch.library.opcheck(torch.ops.lynx.prune_compress_24_cutlass.default, ([x], "identity()"))


def test_a_call_that_would_lose_gradients_raises_and_one_without_them_runs():
    x, scale = torch.randn(3, 2), torch.randn(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="has no backward"):
        torch.ops.lynx._test_scale_rows(x, scale, 0.0)
    with pytest.raises(RuntimeError, match="has no backward"):  # a tensor inside a list counts too
        torch.ops.lynx.prune_compress_24_cutlass([torch.randn(16, 64, requires_grad=True)], "identity()")
    with torch.no_grad():
        out, _ = torch.ops.lynx._test_scale_rows(x, scale, 0.0)
    torch.testing.assert_close(out, x * scale.detach()[:, None])


def test_raw_stream_refuses_a_cpu_device():
    from lynx_compile.kernel_op import raw_stream

    with pytest.raises(ValueError, match="on cpu"):
        raw_stream(torch.device("cpu"))


def test_other_namespaces_are_refused():
    with pytest.raises(ValueError, match="lynx namespace"):
        kernel_op("mylib::op")

"""The cached-plan cuSPARSELt path's bookkeeping and plumbing, on the CPU (its GPU checks are in test_gpu.py):
one plan per shape however many calls, the op's fake shape, and the cuSPARSELt path's parts with its GEMM swapped."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lynx_compile.folds import IDENTITY
from lynx_compile.kernels.nm_prune import nm_prune_ref
from lynx_compile.kernels.cusparselt_layout import decompress_24_ref
from lynx_compile.kernels.prune_compress_24 import as_flat
from lynx_compile.paths import PATHS
from lynx_compile.paths.cusparselt import cusparselt_gemms
from lynx_compile.paths.cusparselt_planned import CusparseltPlanned, Plans, available


@given(st.lists(st.tuples(st.integers(0, 1), st.sampled_from([16, 32, 48]), st.sampled_from([64, 128]),
                          st.sampled_from([16, 64]), st.sampled_from([torch.bfloat16, torch.float16]),
                          st.integers(0, 3)), min_size=1, max_size=30))  # fmt: skip
@settings(max_examples=30, deadline=None)
def test_one_plan_per_shape_and_algorithm_and_one_handle_per_device(calls):
    made, handles = [], []

    def make_plan(handle, rows, k, n, dtype, algorithm):
        made.append((handle, rows, k, n, dtype, algorithm))
        return object()

    def init(device):
        handles.append(device)
        return 1000 + device

    plans = Plans(make_plan, init)
    got = {call: plans.get(*call) for call in calls}
    assert all(plans.get(*call) is plan for call, plan in got.items())  # the same plan, every later call
    assert plans.built == len(made) == len(set(calls))
    assert sorted(handles) == sorted({device for device, *_ in calls})  # one cuSPARSELt handle per device
    assert all(handle == 1000 + device for (handle, *_), (device, *_) in zip(made, dict.fromkeys(calls)))


def test_the_op_has_the_shape_of_torchs_on_fake_tensors():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        operand = torch.empty(48, 40, dtype=torch.bfloat16)  # a compressed operand of 48 padded rows
        weight = torch.empty(96, 64, dtype=torch.bfloat16)
        out = torch.ops.lynx.cslt_planned_mm(operand, weight, 2)
    assert out.shape == (48, 96) and out.dtype == torch.bfloat16


def test_the_path_registers_only_with_nvmath_and_runs_nothing_on_a_cpu():
    assert ("cusparselt_planned" in PATHS) == available()
    assert not CusparseltPlanned().runs_on(torch.device("cpu"))


@pytest.mark.parametrize("rows", [5, 16, 37])
def test_the_cusparselt_parts_with_another_gemm_are_the_sparse_layer(rows):
    """cusparselt_gemms with its GEMM swapped for a decompress-and-multiply reference: the compressor's padding and
    the first-M-rows view are the path's, whichever GEMM runs (the planned path swaps only that)."""
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 64, generator=g).to(torch.bfloat16)
    weights = [torch.randn(n, 64, generator=g).to(torch.bfloat16) for n in (32, 16)]
    calls = []

    def reference_mm(operand, weight, algorithm):
        calls.append(algorithm)
        stored, k = operand.shape[0], weight.shape[1]
        return decompress_24_ref(as_flat(operand, stored, k), stored, k).float() @ weight.float().t()

    outs, scale = cusparselt_gemms([x], IDENTITY, weights, [3, 5], reference_mm)
    pruned, expected_scale = nm_prune_ref(x, 2, 4)
    assert calls == [3, 5]  # each member's own algorithm
    torch.testing.assert_close(scale, expected_scale, rtol=1e-6, atol=0)
    for out, weight in zip(outs, weights):
        assert out.shape == (rows, weight.shape[0])  # the layer's M rows, not the padded operand's
        torch.testing.assert_close(out, pruned.float() @ weight.float().t(), rtol=1e-5, atol=1e-5)

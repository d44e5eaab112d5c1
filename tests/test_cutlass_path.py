"""The CUTLASS path's own logic on the CPU: the compressor runs under Triton's interpreter and the GEMM is replaced by
its reference (`cutlass_layout.sparse_mm_ref`), so what is checked is what the path adds around the kernel — which
bias goes into the epilogue, the scale with and without norm compensation, the correction, groups, shapes — against
the simulate path, which is the method's definition. The kernel itself is checked on the GPU
(tests/test_gpu_cutlass.py)."""

import pytest
import torch

from lynx_compile.folds import FoldSpec
from lynx_compile.kernels import cutlass_gemm
from lynx_compile.kernels.cutlass_layout import sparse_mm_ref
from lynx_compile.method import Method
from lynx_compile.paths import get_path
from lynx_compile.plan import SparseLinearPlan

SETTING = {"config": "128x256x64_c2x1_coop", "raster": "along_m", "swizzle": 2}


@pytest.fixture(autouse=True)
def reference_gemm(monkeypatch):
    """The kernel's reference in place of the kernel; records what each call got."""
    calls = []

    def gemm(values, metadata, weight, scale, bias, config, raster=0, swizzle=1, weight_scale=None):
        calls.append({"scale": scale is not None, "bias": bias, "config": config.name, "raster": raster,
                      "swizzle": swizzle})  # fmt: skip
        return sparse_mm_ref(values, metadata, weight, scale, bias, weight_scale)

    monkeypatch.setattr(cutlass_gemm, "sparse_mm", gemm)
    return calls


def plan(fold=FoldSpec("identity", ()), method=Method(), params=SETTING):
    return SparseLinearPlan("cutlass", method=method, fold=fold, params=tuple(sorted(params.items())))


def close(out, expected):
    rel = ((out.float() - expected.float()).norm() / expected.float().norm()).item()
    assert out.shape == expected.shape and out.dtype == expected.dtype and rel < 1e-2, rel


@pytest.mark.parametrize("norm_compensation", [True, False])
@pytest.mark.parametrize("bias_dtype", [None, torch.bfloat16, torch.float32])
def test_one_layer_equals_simulate(bias_dtype, norm_compensation, reference_gemm):
    torch.manual_seed(0)
    x = torch.randn(2, 37, 128, dtype=torch.bfloat16)
    weight = torch.randn(24, 128, dtype=torch.bfloat16) / 128**0.5
    bias = None if bias_dtype is None else torch.randn(24, dtype=bias_dtype)
    method = Method(norm_compensation=norm_compensation)
    out = get_path("cutlass").forward([x], weight, bias, None, plan(method=method))
    close(out, get_path("simulate").forward([x], weight, bias, None, plan(method=method)))
    call = reference_gemm[-1]
    assert call["scale"] is norm_compensation
    # the epilogue takes a bias of the weight's dtype; another is added after the kernel
    assert (call["bias"] is not None) == (bias_dtype == torch.bfloat16)
    assert (call["config"], call["raster"], call["swizzle"]) == (SETTING["config"], 1, 2)


def test_a_correction_is_added_after_the_kernel():
    torch.manual_seed(1)
    x = torch.randn(64, 128, dtype=torch.bfloat16)
    weight = torch.randn(32, 128, dtype=torch.bfloat16) / 128**0.5
    lora = (torch.randn(32, 4, dtype=torch.bfloat16) / 2, torch.randn(4, 128, dtype=torch.bfloat16) / 11)
    out = get_path("cutlass").forward([x], weight, None, lora, plan())
    close(out, get_path("simulate").forward([x], weight, None, lora, plan()))


def test_a_folded_producer_is_pruned_as_loaded():
    torch.manual_seed(2)
    head, tail = torch.randn(40, 64, dtype=torch.bfloat16), torch.randn(40, 128, dtype=torch.bfloat16)
    weight = torch.randn(16, 192, dtype=torch.bfloat16) / 192**0.5
    fold = FoldSpec("concat", ("none", "gelu_tanh"))
    out = get_path("cutlass").forward([head, tail], weight, None, None, plan(fold=fold))
    close(out, get_path("simulate").forward([head, tail], weight, None, None, plan(fold=fold)))


def test_a_group_runs_each_member_with_its_own_setting(reference_gemm):
    torch.manual_seed(3)
    x = torch.randn(3, 21, 128, dtype=torch.bfloat16)
    weights = [torch.randn(n, 128, dtype=torch.bfloat16) / 128**0.5 for n in (16, 24, 16)]
    biases = [None, torch.randn(24, dtype=torch.bfloat16), torch.randn(16, dtype=torch.float32)]
    members = [{**SETTING, "swizzle": swizzle} for swizzle in (1, 2, 4)]
    group_plan = plan(params={"members": members})
    outs = get_path("cutlass").forward_group([x], weights, biases, group_plan)
    for out, weight, bias in zip(outs, weights, biases):
        close(out, get_path("simulate").forward([x], weight, bias, None, plan()))
    assert [call["swizzle"] for call in reference_gemm] == [1, 2, 4]


def test_describe_names_the_settings():
    text = get_path("cutlass").describe({"members": [SETTING, {**SETTING, "raster": "heuristic"}]})
    assert "CUTLASS" in text and "along_m swizzle 2" in text and "heuristic swizzle 2" in text

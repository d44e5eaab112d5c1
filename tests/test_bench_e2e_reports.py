"""bench_e2e's summaries of a lynx report: why layers stayed dense, and which (by kind, block indices folded)."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
from bench_e2e import dense_layer_kinds, dense_reasons  # noqa: E402


def layer(name, decision, reason="", tokens=4096):
    return SimpleNamespace(name=name, decision=decision, reason=reason, tokens=tokens)


REPORT = SimpleNamespace(layers=[
    layer("transformer_blocks.0.attn.to_out.0", "dense", "sparse path measured 1.01× dense < min_speedup=1.05"),
    layer("transformer_blocks.1.attn.to_out.0", "dense", "sparse path measured 1.03× dense < min_speedup=1.05"),
    layer("transformer_blocks.0.attn.to_add_out", "dense", "sparse path measured 0.97× dense < min_speedup=1.05", 512),
    layer("transformer_blocks.0.ff.net.2", "sparse"),
    layer("time_text_embed.timestep_embedder.linear_1", "dense", "tokens 1 < min_tokens=16", 1),
    layer("blocks.1.2.proj", "dense", "tokens 1 < min_tokens=16", 1),  # nested indices: both folded
])  # fmt: skip


def test_dense_layers_are_named_by_kind_with_their_first_reason():
    kinds = dense_layer_kinds(REPORT)
    assert kinds == {
        "transformer_blocks.*.attn.to_out.0": {"rows": 2, "tokens": 4096,
                                               "reason": "sparse path measured 1.01× dense < min_speedup=1.05"},
        "transformer_blocks.*.attn.to_add_out": {"rows": 1, "tokens": 512,
                                                 "reason": "sparse path measured 0.97× dense < min_speedup=1.05"},
        "time_text_embed.timestep_embedder.linear_1": {"rows": 1, "tokens": 1, "reason": "tokens 1 < min_tokens=16"},
        "blocks.*.*.proj": {"rows": 1, "tokens": 1, "reason": "tokens 1 < min_tokens=16"},
    }  # fmt: skip
    assert sum(entry["rows"] for entry in kinds.values()) == sum(dense_reasons(REPORT).values()) == 5


def test_dense_reasons_group_what_differs_only_in_numbers():
    assert dense_reasons(REPORT) == {"sparse path measured # dense < min_speedup=#": 3, "tokens 1 < min_tokens=16": 2}


def test_the_kernel_breakdown_knows_every_lynx_triton_kernel_and_the_usual_libraries():
    import importlib
    import pkgutil

    from triton.runtime.jit import KernelInterface

    import lynx_compile.kernels
    from kernel_breakdown import format_breakdowns, kind_of

    ours = [name for info in pkgutil.iter_modules(lynx_compile.kernels.__path__)
            for name, value in vars(importlib.import_module(f"lynx_compile.kernels.{info.name}")).items()
            if isinstance(value, KernelInterface) and name.endswith("_kernel")]  # fmt: skip
    assert len(ours) >= 8 and all(kind_of(name) == "lynx (Triton)" for name in ours), ours
    assert kind_of("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64_cublas") == "dense GEMM"
    assert kind_of("nvjet_hsh_256x128_64x4_2x1_v_bz_coopA_NTN") == "dense GEMM"
    assert kind_of("void cutlass::device_kernel<cutlass::gemm::kernel::GemmUniversal<cutlass::gemm::collective::"
                   "CollectiveMma<cutlass::gemm::MainloopSm90TmaGmmaWarpSpecializedSparse<4>>>>") == "sparse GEMM"
    assert kind_of("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4>>") == "attention"
    assert kind_of("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x128") == "attention"
    assert kind_of("triton_poi_fused_add_mul_0") == "Inductor (Triton)"
    # Inductor names a kernel after the ops it feeds too
    assert kind_of("triton_poi_fused_cat_float8_sparse_linear_gelu_permute_view_3") == "Inductor (Triton)"
    assert kind_of("triton_red_fused__fused_rms_norm__scaled_dot_product_cudnn_attention__to_copy") == \
        "Inductor (Triton)"
    table = format_breakdowns({"a": {"per_call_ms": {"attention": 2.0, "other": 0.5}, "total_ms": 2.5, "top": []},
                               "b": {"per_call_ms": {"dense GEMM": 3.0}, "total_ms": 3.0, "top": []}})  # fmt: skip
    rows = {line[:32].strip(): line[32:].split() for line in table.splitlines()[1:5]}
    assert rows["dense GEMM"] == ["0.00", "3.00"] and rows["attention"] == ["2.00", "0.00"]
    assert rows["total"] == ["2.50", "3.00"]


def test_the_spread_over_processes_is_each_process_own_ratio_with_its_median_and_range():
    from bench_e2e_processes import spread

    def row(fp8_ms, lynx_ms, dense_ms=140.0):
        return {"model": "flux", "cuda_graphs": True, "dense_ms": dense_ms, "fp8_ms": fp8_ms, "fp8_lynx_ms": lynx_ms,
                "speedup_fp8": dense_ms / fp8_ms, "speedup_fp8_lynx": fp8_ms / lynx_ms,
                "baselines": {"fp8": "dense", "fp8_lynx": "fp8"}}  # fmt: skip

    runs = [[row(110.0, 100.0)], [row(101.0, 90.0)], [row(104.0, 95.0, 139.0)]]
    entries = {entry["variant"]: entry for entry in spread(runs)}
    lynx = entries["fp8_lynx"]
    assert lynx["over"] == "fp8" and lynx["processes"] == 3
    assert lynx["ms"] == [100.0, 90.0, 95.0] and lynx["over_ms"] == [110.0, 101.0, 104.0]
    ratios = sorted([1.1, 101 / 90, 104 / 95])
    assert (lynx["min_ratio"], lynx["median_ratio"], lynx["max_ratio"]) == tuple(ratios)
    assert entries["fp8"]["median_ratio"] == 139 / 104  # the third process's, over its own dense
    mixed = [[row(110.0, 100.0)], [{**row(110.0, 100.0), "baselines": {"fp8": "dense", "fp8_lynx": "dense"}}]]
    with pytest.raises(ValueError, match="fp8_lynx is over dense in one process and fp8"):
        spread(mixed)


def test_each_process_is_fresh_shares_the_lynx_cache_and_the_budget_stops_the_next(tmp_path, monkeypatch):
    import bench_e2e_processes

    fake = tmp_path / "bench" / "bench_e2e.py"  # writes its pid and cache directory as its row
    fake.parent.mkdir()
    fake.write_text("import json, os, sys\nrow = {'pid': os.getpid(), 'cache': os.environ['LYNX_CACHE_DIR'], "
                    "'args': sys.argv[1:]}\nopen(os.path.join(os.environ['OUT'], 'bench_e2e_x.json'), 'w')"
                    ".write(json.dumps({'rows': [row]}))\n")  # fmt: skip
    monkeypatch.setattr(bench_e2e_processes, "HERE", fake.parent)
    monkeypatch.delenv("LYNX_CACHE_DIR", raising=False)
    runs = bench_e2e_processes.run_processes(3, ["flux", "graphs"], tmp_path / "out", budget_s=3600)
    rows = [rows[0] for rows in runs]
    assert len({row["pid"] for row in rows}) == 3 and len({row["cache"] for row in rows}) == 1
    assert all(row["args"] == ["flux", "graphs"] for row in rows)
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["process_0", "process_1", "process_2"]
    assert len(bench_e2e_processes.run_processes(3, ["flux"], tmp_path / "again", budget_s=0)) == 1

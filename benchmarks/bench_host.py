"""Host time per call without CUDA graphs: what a sparse layer costs the CPU that launches it (issue 12's goal:
≤ 20 µs a call).

    python benchmarks/bench_host.py [--json out.json]     # an sm_90 GPU

Measured as a launch-bound program sees it: a sleep kernel keeps the GPU busy first, so every call below enqueues
without waiting for the GPU, and the CPU time of `CALLS` calls over `CALLS` is one call's host cost (median of
`ROUNDS` rounds; the shapes are small so that the GPU's own time never shows). The rows of one table take turns
within each round beside a cuBLAS call (`F.linear`), and each is also given as a multiple of that call's host time:
the CPUs of these machines vary by 2× from one run to the next, so only rows of one run, or those ratios, compare.

- pieces: lynx's CUTLASS GEMM called directly, as the op (`lynx::cutlass_sparse_mm`) and as a lowered graph calls
  it (Inductor's extern kernel, `paths/lowered_gemm.py`: Y allocated, then the call); the compressor likewise
  (`lynx::prune_compress_24_cutlass`), and as the speed rule times it (what a lowered graph runs: a planned launch
  by Triton, or its replay from a CUDA graph standing for Inductor's launch without CUDA graphs); one allocation and
  one Triton launch for scale;
- whole layers: one `nn.Linear` compiled by Inductor (dense) and by lynx on each sparse path (forced sparse:
  `min_speedup` ≈ 0), called as a model is, Dynamo's guards and Inductor's wrapper included. lynx's cost per layer
  is its row less the dense one;
- float8 (where torchao is installed): the FP8 compressor and GEMM ops, and the same `nn.Linear` quantized by
  torchao's rowwise float8, compiled by Inductor (torchao's dense FP8) and by lynx (the CUTLASS FP8 path). lynx's
  cost per float8 layer is its row less torchao's.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import lynx_compile  # noqa: E402
from lynx_compile.folds import FoldSpec  # noqa: E402
from lynx_compile.kernels import cutlass_gemm  # noqa: E402
from lynx_compile.kernels.cutlass_gemm import CONFIGS, FP8_CONFIGS  # noqa: E402
from lynx_compile.paths import PATHS  # noqa: E402
from lynx_compile.paths.lowered_compressors import as_lowered_cutlass, as_lowered_fp8  # noqa: E402
from lynx_compile.paths.lowered_gemm import as_lowered as as_lowered_gemm  # noqa: E402
from lynx_compile.kernels.prune_compress_24 import NORM_EPS, _row_scale_kernel, prune_compress_24_cutlass  # noqa: E402
from needs_gpu import require_cuda  # noqa: E402

CALLS, ROUNDS = 200, 7
M, K, N = 256, 1024, 1024  # GPU work of a few µs a call: the host's time is what shows
SLEEP_CYCLES = 120_000_000  # ≈ 70 ms at the H100's clock: longer than CALLS calls take to enqueue


def host_us(fns: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Each function's host time per call: the median over rounds of one call's CPU time, the GPU kept busy so that
    no call waits for it. The functions take turns within each round, so that the host's drift (these machines'
    CPUs vary by 2× between runs) touches them alike: compare rows of one call, or their ratios to cuBLAS."""
    for fn in fns.values():
        for _ in range(5):
            fn()
    torch.cuda.synchronize()
    rounds: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(ROUNDS):
        for name, fn in fns.items():
            torch.cuda._sleep(SLEEP_CYCLES)
            start = time.perf_counter()
            for _ in range(CALLS):
                fn()
            rounds[name].append((time.perf_counter() - start) / CALLS * 1e6)
            torch.cuda.synchronize()
    return {name: statistics.median(times) for name, times in rounds.items()}


def compiled_layer(path: str | None, float8: bool = False) -> tuple[Callable[[], object], str]:
    """A compiled one-linear model's forward and what was decided for it (path None: Inductor alone, dense); with
    `float8`, the linear quantized by torchao's rowwise float8 first."""
    torch._dynamo.reset()
    model = torch.nn.Linear(K, N, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    if float8:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

        quantize_(model, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
    if path is None:
        compiled = torch.compile(model)
        compiled(x)
        return (lambda: compiled(x)), "dense (Inductor)"
    options = {"sparse_paths": path, "min_speedup": 1e-6, "min_tokens": 1}
    compiled = torch.compile(model, backend="lynx", options=options)
    with lynx_compile.collect_reports() as report:
        compiled(x)
    layer = report.layers[0]
    if layer.decision != "sparse":
        return (lambda: compiled(x)), f"dense: {layer.reason}"
    return (lambda: compiled(x)), f"sparse on {layer.path}" + (" (opaque)" if layer.opaque else "")


def profile_compiled_layer(path: str, top: int = 30) -> None:
    """The functions the compiled layer's calls spend their host time in, by own time (cProfile inflates each
    Python call by a similar amount: read the ranking, not the figures)."""
    import cProfile
    import pstats

    with torch.no_grad():
        forward, _ = compiled_layer(path)
        host_us({"warm-up": forward})
        profiler = cProfile.Profile()
        torch.cuda._sleep(SLEEP_CYCLES)
        profiler.enable()
        for _ in range(CALLS):
            forward()
        profiler.disable()
        torch.cuda.synchronize()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(top)


def main(argv=None) -> dict:
    require_cuda()
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", type=Path)
    parser.add_argument("--profile", action="store_true",
                        help="also print where the host time of the compiled CUTLASS layer goes (cProfile)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    weight = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
    bias = torch.randn(N, device="cuda", dtype=torch.bfloat16)
    rows: list[dict] = []
    cublas = "cuBLAS F.linear (with bias)"

    def measure(fns: dict[str, Callable[[], object]], notes: dict[str, str] | None = None) -> None:
        """Time `fns` and cuBLAS in turns; a row per function, with its ratio to cuBLAS's time in the same rounds."""
        with torch.no_grad():
            times = host_us({cublas: lambda: F.linear(x, weight, bias), **fns})
        for name, us in times.items():
            if name == cublas and rows:
                continue
            note = (notes or {}).get(name, "")
            rows.append({"row": name, "host_us": us, "over_cublas": us / times[cublas], "note": note})
            print(f"{name:54} {us:8.1f} µs {us / times[cublas]:6.2f}× cuBLAS  {note}", flush=True)

    print(f"host time per call, {M}x{K}->{N} bf16, {CALLS} calls a round, median of {ROUNDS} rounds")
    energies, scale_out = torch.rand(M, 2, 2, device="cuda"), torch.empty(M, device="cuda")
    pieces = {"one allocation (torch.empty_like)": lambda: torch.empty_like(x),
              "one Triton launch (the compressor's row-scale kernel)": lambda: _row_scale_kernel[(M // 64,)](
                  energies, scale_out, M, 2, NORM_EPS, BLOCK_M=64, CHUNKS=2)}  # fmt: skip
    if cutlass_gemm.unavailable_reason() is None:
        config = CONFIGS[0]
        values, metadata, scale = prune_compress_24_cutlass(x)
        fold = FoldSpec().encode()
        pieces.update({
            "CUTLASS GEMM, Python call": lambda: cutlass_gemm.sparse_mm(values, metadata, weight, scale, bias, config),
            "CUTLASS GEMM, op lynx::cutlass_sparse_mm": lambda: torch.ops.lynx.cutlass_sparse_mm(
                values, metadata, weight, scale, bias, config.name, 0, 1),
            "CUTLASS GEMM, as Inductor's code calls it (extern)": lambda: as_lowered_gemm(
                values, metadata, weight, scale, bias, config.name, 0, 1),
            "compressor, Python call": lambda: prune_compress_24_cutlass(x),
            "compressor, op lynx::prune_compress_24_cutlass": lambda: torch.ops.lynx.prune_compress_24_cutlass(
                [x], fold),
            "compressor, planned launch (the speed rule's with CUDA graphs)": as_lowered_cutlass([x], FoldSpec()),
            "compressor, replayed launch (the speed rule's without)": as_lowered_cutlass([x], FoldSpec(),
                                                                                    replayed=True),
        })  # fmt: skip
    else:
        print(f"CUTLASS: {cutlass_gemm.unavailable_reason()}")
    float8 = importlib.util.find_spec("torchao") is not None and cutlass_gemm.unavailable_reason() is None
    if float8:
        from lynx_compile.float8 import quantize_weight

        fp8_weight = quantize_weight(weight)
        fp8_values, fp8_metadata, fp8_scale = torch.ops.lynx.prune_quantize_compress_fp8([x], fold, True)
        fp8_config = FP8_CONFIGS[0].name
        pieces.update({
            "FP8 compressor, op lynx::prune_quantize_compress_fp8": lambda: torch.ops.lynx.prune_quantize_compress_fp8(
                [x], fold, True),
            "FP8 compressor, replayed launch (the speed rule's without)": as_lowered_fp8([x], FoldSpec(),
                                                                                         replayed=True),
            "FP8 CUTLASS GEMM, op lynx::cutlass_sparse_mm": lambda: torch.ops.lynx.cutlass_sparse_mm(
                fp8_values, fp8_metadata, fp8_weight.qdata, fp8_scale, bias, fp8_config, 0, 1,
                weight_scale=fp8_weight.scale),
        })  # fmt: skip
    measure(pieces)
    # paths not registered here (cusparselt_planned without the `cuda` extra) are left out
    layers = [(path, False) for path in (None, "cutlass", "cusparselt_planned", "cusparselt") if path in (None, *PATHS)]
    layers += [(None, True), ("cutlass_float8", True)] if float8 else []
    for path, quantized in layers:
        with torch.no_grad():  # as pipelines call their transformer
            # a path that cannot run here leaves the layer dense, and the note says so
            forward, decided = compiled_layer(path, quantized)
        baseline = "torchao" if quantized else "Inductor dense"
        name = f"compiled {'float8 ' if quantized else ''}nn.Linear, {path or baseline}"
        measure({name: forward}, {name: decided})
    if args.profile:
        profile_compiled_layer("cutlass")
    baselines = {False: "compiled nn.Linear, Inductor dense", True: "compiled float8 nn.Linear, torchao"}
    for r in rows:
        if r["row"].startswith("compiled") and r["note"].startswith("sparse"):  # a dense one adds nothing
            baseline = baselines[r["row"].startswith("compiled float8")]
            dense = next(b["over_cublas"] for b in rows if b["row"] == baseline)
            r["over_dense_cublas_calls"] = r["over_cublas"] - dense
            print(f"  lynx adds {r['over_dense_cublas_calls']:.2f} cuBLAS calls' host time a layer on "
                  f"{r['row'].split(', ')[1]}")  # fmt: skip
    result = {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "shape": [M, K, N], "calls": CALLS, "rounds": ROUNDS, "rows": rows}  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()

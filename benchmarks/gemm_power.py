"""The GEMMs held under the power cap: SM clock and board power while dense and sparse GEMMs run for seconds.

    python benchmarks/gemm_power.py [--seconds S] [name ...]   # sm_90 GPU, nvcc, CUTLASS's headers, nvidia-smi;
                                                               # writes gemm_power.json to $OUT

`tune_cutlass.py` times 30 ms bursts; a model's GEMMs run back to back for as long as the forward lasts, at whatever
clock the board's power limit leaves. Per shape, four phases, each a CUDA graph of 20 GEMMs replayed for S seconds
(default 4) on random (never zero) data: bf16 dense (`F.linear`), bf16 2:4 (lynx's CUTLASS kernel, the fastest
configuration and raster order of a short sweep), FP8 dense (`torch._scaled_mm` rowwise, fast accumulation) and FP8
2:4. `nvidia-smi` samples clock, power and throttle reasons every 100 ms; a phase's figures are the medians of its
samples after its first second. Per phase: ms a GEMM (the phase's own CUDA events, sustained), TFLOP/s (dense-
equivalent: 2·M·N·K over the time), the SM clock and the share of the tensor cores' peak *at that clock*
(dense 4096 FLOP a clock per SM for 16-bit, 8192 for FP8; the 2:4 forms twice that), so a slower clock and a
slower kernel are told apart.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lynx_compile.kernels import cutlass_gemm  # noqa: E402
from lynx_compile.timing import cuda_graph_ms  # noqa: E402
from tune_cutlass import gemm_operands, sparse_gemm  # noqa: E402

SHAPES = [  # (name, M, K, N)
    ("flux mlp up", 4608, 3072, 12288),
    ("flux single out", 4608, 15360, 3072),
    ("wan ffn down", 14040, 13824, 5120),
]
DENSE_FLOP_PER_CLOCK_PER_SM = {"bf16": 4096, "fp8": 8192}
SAMPLE_FIELDS = "timestamp,clocks.sm,power.draw,clocks_event_reasons.active"


def fastest_sparse(operand: dict, configs) -> tuple[str, Callable[[], torch.Tensor]]:
    """The fastest (configuration, raster) of a short sweep (swizzle 1), as a call."""
    calls = {}
    for config in configs:
        for raster in cutlass_gemm.RASTERS.values():
            def call(config=config, raster=raster):
                return sparse_gemm(operand, config, raster)
            calls[(config.name, raster)] = (cuda_graph_ms(call, rep_ms=30), call)
    best = min(calls, key=lambda key: calls[key][0])
    return f"{best[0]} raster {best[1]}", calls[best][1]


def phases(m: int, k: int, n: int) -> dict:
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    weight = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
    bf16_dense, bf16_operand = gemm_operands(x, weight, fp8=False)
    fp8_dense, fp8_operand = gemm_operands(x, weight, fp8=True)
    bf16_config, bf16_sparse = fastest_sparse(bf16_operand, cutlass_gemm.CONFIGS)
    fp8_config, fp8_sparse = fastest_sparse(fp8_operand, cutlass_gemm.FP8_CONFIGS)
    return {
        "bf16 dense": ("bf16", 1, bf16_dense, "cuBLAS"),
        "bf16 2:4": ("bf16", 2, bf16_sparse, bf16_config),
        "fp8 dense": ("fp8", 1, fp8_dense, "_scaled_mm"),
        "fp8 2:4": ("fp8", 2, fp8_sparse, fp8_config),
    }


def run_phase(call, seconds: float) -> tuple[float, float, float]:
    """(ms a GEMM over the phase, the phase's start and end as Unix times)."""
    graph = torch.cuda.CUDAGraph()
    call()
    torch.cuda.synchronize()
    with torch.cuda.graph(graph):
        for _ in range(20):
            call()
    start_event, end_event = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    begin = time.time()
    start_event.record()
    replays = 0
    while time.time() - begin < seconds:
        for _ in range(10):
            graph.replay()
        replays += 10
        if replays % 50 == 0:
            torch.cuda.synchronize()  # keep the queue short, so that the phase ends when its clock says
    end_event.record()
    torch.cuda.synchronize()
    return start_event.elapsed_time(end_event) / (replays * 20), begin, time.time()


def read_samples(path: str) -> list[tuple[float, float, float, int]]:
    """(Unix time, SM MHz, W, throttle reasons) of each nvidia-smi sample."""
    samples = []
    with open(path) as f:
        for line in f.read().splitlines()[1:]:
            fields = [field.strip() for field in line.split(",")]
            try:
                stamp = datetime.datetime.strptime(fields[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
                samples.append((stamp, float(fields[1].split()[0]), float(fields[2].split()[0]), int(fields[3], 16)))
            except (ValueError, IndexError):
                continue
    return samples


def main() -> None:
    why = cutlass_gemm.unavailable_reason()
    if why is not None:
        sys.exit(f"lynx's CUTLASS kernels cannot run here: {why}")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="shapes whose name contains one of these words (default: all)")
    parser.add_argument("--seconds", type=float, default=4.0, help="each phase's length")
    args = parser.parse_args()
    torch.manual_seed(0)
    sm_count = torch.cuda.get_device_properties(0).multi_processor_count
    log = tempfile.NamedTemporaryFile(suffix=".csv", delete=False).name
    sampler = subprocess.Popen(["nvidia-smi", f"--query-gpu={SAMPLE_FIELDS}", "--format=csv", "-lms", "100", "-f", log])
    timed = []
    try:
        for name, m, k, n in SHAPES:
            if args.names and not any(word in name for word in args.names):
                continue
            for phase, (kind, sparsity, call, kernel) in phases(m, k, n).items():
                ms, begin, end = run_phase(call, args.seconds)
                timed.append((name, m, k, n, phase, kind, sparsity, kernel, ms, begin, end))
                time.sleep(1.0)  # let the clock recover between phases
    finally:
        time.sleep(0.3)
        sampler.terminate()
        sampler.wait()
    samples = read_samples(log)
    rows = []
    for name, m, k, n, phase, kind, sparsity, kernel, ms, begin, end in timed:
        inside = [s for s in samples if begin + 1.0 <= s[0] <= end]
        clock = statistics.median(s[1] for s in inside) if inside else float("nan")
        tflops = 2 * m * n * k / ms / 1e9
        peak = sm_count * clock * 1e6 * DENSE_FLOP_PER_CLOCK_PER_SM[kind] * sparsity / 1e12
        watts = statistics.median(s[2] for s in inside) if inside else float("nan")
        capped = sum(bool(s[3] & 0x4) for s in inside) / max(len(inside), 1)  # 0x4: the software power cap
        rows.append({"shape": name, "M": m, "K": k, "N": n, "phase": phase, "kernel": kernel, "ms": ms,
                     "tflops": tflops, "sm_mhz": clock, "watts": watts, "power_capped_share": capped,
                     "share_of_peak_at_clock": tflops / peak, "samples": len(inside)})  # fmt: skip
    with open(os.path.join(os.environ.get("OUT", "/tmp"), "gemm_power.json"), "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "seconds": args.seconds,
                   "rows": rows}, f, indent=1)  # fmt: skip
    header = ("shape", "phase", "ms", "TFLOP/s", "MHz", "W", "capped", "of peak", "kernel")
    print("{:16} {:10} {:>7} {:>8} {:>5} {:>4} {:>6} {:>7}  {}".format(*header))
    for r in rows:
        print(f"{r['shape']:16} {r['phase']:10} {r['ms']:7.3f} {r['tflops']:8.0f} {r['sm_mhz']:5.0f} "
              f"{r['watts']:4.0f} {r['power_capped_share']:6.0%} {r['share_of_peak_at_clock']:7.0%}  {r['kernel']}")


if __name__ == "__main__":
    main()

"""One GPU against two under diffusers' context parallelism: Inductor dense vs lynx, per world size, same machine.

    torchrun --nproc-per-node 1 benchmarks/bench_parallel.py wan     # one GPU, no parallelism
    torchrun --nproc-per-node 2 benchmarks/bench_parallel.py wan     # two GPUs: Ulysses degree 2
    python benchmarks/bench_parallel.py table                        # both runs side by side: ratios and scaling

Cases (bf16, random weights, batch 1, compiled block by block with diffusers' `compile_repeated_blocks`, CUDA
graphs unless `no-graphs` follows the case):
- wan: Wan2.1-14B's config with 4 of its 40 blocks, 480×832, 81 frames: 21 × 30 × 52 = 32760 video tokens (16380
  per rank on two GPUs, not a multiple of 16) + 512 text tokens;
- flux: FLUX.1's config with 4 of its 19 double and 8 of its 38 single blocks, 2048²: 16384 image + 512 text tokens.
On two GPUs the model runs under `enable_parallelism(config=ContextParallelConfig(ulysses_degree=2))`: diffusers
splits the sequence, each rank runs its share through every linear, and attention exchanges heads (all-to-all).
lynx decides on rank 0 and every rank takes its decisions (`lynx_compile.paths.measurements`). Each variant is
timed on every rank with CUDA events (median of 10 after 3 warm-ups, twice round interleaved, the lower median
counts), the ranks starting together; rank 0's times are written to $OUT/bench_parallel_<case>_<n>gpu.json. Fewer
blocks than the real models keep compiles and timing short: the ratio is a property of the blocks, which all have
the same shapes.
"""

from __future__ import annotations

import gc
import glob
import json
import os
import sys
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lynx_compile  # noqa: E402
from bench_e2e import dense_reasons, flux_case, forward, time_forward_ms, wan_case  # noqa: E402

CASES = {
    "wan": lambda: wan_case(frames=81, num_layers=4),
    "flux": lambda: flux_case(resolution=2048, num_layers=4, num_single_layers=8),
}
VARIANTS = {
    "dense": dict(backend="inductor", options={}),
    "lynx": dict(backend="lynx", options={"execution": "sparse"}),
}


def build(case: str, world: int) -> tuple[torch.nn.Module, dict]:
    model, inputs = CASES[case]()
    if world > 1:
        from diffusers import ContextParallelConfig

        model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world))
    return model, inputs


def run(case: str, graphs: bool) -> dict:
    rank, world = dist.get_rank(), dist.get_world_size()
    compiled, reports = {}, {}
    for variant, kwargs in VARIANTS.items():
        model, inputs = build(case, world)
        options = {**kwargs["options"], **({"triton.cudagraphs": True} if graphs else {})}
        model.compile_repeated_blocks(backend=kwargs["backend"], options=options or None)
        started = time.perf_counter()
        with torch.no_grad(), lynx_compile.collect_reports() as report:
            forward(model, inputs)
        torch.cuda.synchronize()
        if rank == 0:
            print(f"{case} {world} GPU(s) {variant}: compiled in {time.perf_counter() - started:.0f} s; "
                  f"{report.summary() if report.layers else 'no lynx report'}", flush=True)  # fmt: skip
        compiled[variant], reports[variant] = (model, inputs), report
    times = {variant: [] for variant in VARIANTS}
    for _ in range(2):
        for variant, (model, inputs) in compiled.items():
            dist.barrier()
            with torch.no_grad():
                times[variant].append(time_forward_ms(lambda: forward(model, inputs))[0])
    best = {variant: min(ms) for variant, ms in times.items()}
    lynx = reports["lynx"]
    compiled.clear()  # the models and their graphs go before the process group does
    return {
        "model": case, "gpus": world, "cuda_graphs": graphs, **{f"{v}_ms": ms for v, ms in best.items()},
        "speedup": best["dense"] / best["lynx"], "sparse_flop_share": lynx.sparse_flop_share,
        "dense_reasons": dense_reasons(lynx), "tokens_per_rank": sorted({str(layer.tokens) for layer in lynx.layers}),
        "times": times,
    }  # fmt: skip


def table(out_dir: str) -> None:
    """Both world sizes of every case: lynx's ratio at each, and how each variant scales from one GPU to two."""
    rows = [json.load(open(path)) for path in sorted(glob.glob(os.path.join(out_dir, "bench_parallel_*gpu.json")))]
    print(f"{'model':6} {'graphs':>6} {'GPUs':>4} {'dense ms':>9} {'lynx ms':>9} {'× dense':>8} {'sparse FLOPs':>12}")
    for row in rows:
        print(f"{row['model']:6} {str(row['cuda_graphs']):>6} {row['gpus']:4} {row['dense_ms']:9.2f} "
              f"{row['lynx_ms']:9.2f} {row['speedup']:8.3f} {100 * row['sparse_flop_share']:11.1f}%")  # fmt: skip
    by_case: dict[tuple, dict[int, dict]] = {}
    for row in rows:
        by_case.setdefault((row["model"], row["cuda_graphs"]), {})[row["gpus"]] = row
    for (model, graphs), worlds in by_case.items():
        if 1 in worlds and 2 in worlds:
            one, two = worlds[1], worlds[2]
            print(f"{model} graphs={graphs}: lynx ratio 2 GPUs - 1 GPU = {two['speedup'] - one['speedup']:+.3f}; "
                  f"scaling 1→2 GPUs: dense {one['dense_ms'] / two['dense_ms']:.3f}×, "
                  f"lynx {one['lynx_ms'] / two['lynx_ms']:.3f}×")  # fmt: skip


def main() -> None:
    out_dir = os.environ.get("OUT", "/tmp")
    if sys.argv[1] == "table":
        table(sys.argv[2] if len(sys.argv) > 2 else out_dir)
        return
    case, graphs = sys.argv[1], "no-graphs" not in sys.argv[2:]
    dist.init_process_group("nccl")
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    row = run(case, graphs)
    if dist.get_rank() == 0:
        row["device"], row["torch"] = torch.cuda.get_device_name(), torch.__version__
        suffix = "" if graphs else "_no-graphs"
        with open(os.path.join(out_dir, f"bench_parallel_{case}{suffix}_{row['gpus']}gpu.json"), "w") as f:
            json.dump(row, f, indent=1)
        print(json.dumps({k: v for k, v in row.items() if k != "times"}), flush=True)
    release_cuda_graphs()
    dist.destroy_process_group()


def release_cuda_graphs() -> None:
    """Free the captured CUDA graphs before the NCCL communicators: a graph holding a collective keeps
    `destroy_process_group` waiting for ever (pytorch/pytorch#115388)."""
    torch.compiler.reset()
    gc.collect()
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()

"""FP8 × 2:4 GEMM alone: lynx's CUTLASS FP8 sparse kernel against dense FP8 and dense bf16 (issue 12 item 6).

    python benchmarks/bench_fp8_sparse.py [name ...]   # sm_90 GPU, nvcc and CUTLASS's headers; prints a table and
                                                       # writes bench_fp8_sparse.json to $OUT

Per shape (tokens M, K → N), one run, CUDA-graph replays (median of do_bench), random (never zero) data:
- bf16: `F.linear(x, W)` (cuBLAS);
- fp8: `torch._scaled_mm` rowwise (x per token, W per output feature, e4m3, bf16 out), fast accumulation, as
  torchao's float8 dynamic-activation / float8-weight inference runs it; `fp8_exact`: without fast accumulation;
- fp8_24: lynx's CUTLASS e4m3 2:4 GEMM (fast accumulation, tile 128×256×128, the faster of its configurations and
  raster orders) with the activation scale (and the norm scale) per row and the weight's per column in its epilogue.
The operands are prepared outside the timing (quantization, pruning, compression): this is the GEMM issue 12's
goal names (≥ 1.3× over FP8 dense, geomean over FLUX shapes). Then the whole layer, as a compiled float8 model runs
it (issue 13's per-layer goal): `fp8_layer`, lynx's Triton rowwise quantizer + `torch._scaled_mm` (what
`float8.dense_float8_linear` runs; a stand-in for torchao's quantization as Inductor compiles it), against
`fp8_24_layer`, the Triton FP8 compressor (prune, quantize, compress in one kernel) + the sparse GEMM. The outputs are
checked against `lynx_compile.fp8`'s reference of the same numerics, and the compressor's operand against the
reference encoder's (`operand_bit_exact`: both the one-pass kernel the layer takes and the general two-pass
one). `quantize_two_pass` and `compress_fp8_two_pass` time the general kernels, `compress_fp8_pairsP` the one-pass
kernel with P pairs of groups a program, `compress_fp8_read_twice` with a row in chunks read twice (not kept in
registers), `compress_fp8_held_warpsW` with rows up to K = 16384 held, in W warps a program, `compress_fp8_maxnregR`
with a thread's registers capped at R (Triton's `maxnreg`), `compress_fp8_pairs64_warps2` in chunks of 64 pairs of
groups, 2 warps a program; `compress_fp8_gelu`
(one-pass) and `compress_fp8_gelu_two_pass` the compressor with a GELU folded, as the MLP down-projections run it.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lynx_compile.float8 import Float8Weight, dense_float8_linear  # noqa: E402
from lynx_compile.folds import IDENTITY, FoldSpec, compress_fp8, loading, quantize_fp8  # noqa: E402
from lynx_compile.fp8 import fp8_linear_ref, quantize_rows  # noqa: E402
from lynx_compile.kernels import cutlass_gemm  # noqa: E402
from lynx_compile.kernels import quantize_fp8_single_pass as single_pass  # noqa: E402
from lynx_compile.kernels.prune_quantize_fp8 import (  # noqa: E402
    prune_quantize_compress_fp8,
    prune_quantize_compress_fp8_ref,
    quantize_rows_fp8,
)
from lynx_compile.method import Method  # noqa: E402
from lynx_compile.timing import cuda_graph_ms  # noqa: E402

SHAPES = [  # (name, M, K, N): bench_linear.py's FLUX 1024² shapes, Wan2.1-14B at 14040 tokens
    ("flux attn out", 4608, 3072, 3072),
    ("flux qkv", 4608, 3072, 9216),
    ("flux mlp up", 4608, 3072, 12288),
    ("flux mlp down", 4608, 12288, 3072),
    ("flux single in", 4608, 3072, 21504),
    ("flux single out", 4608, 15360, 3072),
    ("wan ffn up", 14040, 5120, 13824),
    ("wan ffn down", 14040, 13824, 5120),
    ("flux txt attn", 512, 3072, 3072),  # FLUX's text stream, 512 tokens
    ("flux txt mlp up", 512, 3072, 12288),
    ("flux txt mlp down", 512, 12288, 3072),
]


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def bench_shape(name: str, m: int, k: int, n: int) -> dict:
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    weight = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
    x_q, x_scale = quantize_rows(x)
    w_q, w_scale = quantize_rows(weight)
    w_scale_row = w_scale.reshape(1, n)

    def fp8(fast: bool = True):
        return torch._scaled_mm(x_q, w_q.t(), scale_a=x_scale, scale_b=w_scale_row, out_dtype=torch.bfloat16,
                                use_fast_accum=fast)  # fmt: skip

    values, metadata, row_scale = prune_quantize_compress_fp8_ref(x)  # the layout's pure-torch encoder, on the GPU
    column_scale = w_scale.reshape(n).contiguous()
    timed = {}
    for config in cutlass_gemm.FP8_CONFIGS:
        for raster_name, raster in (("heuristic", 0), ("along_m", 1)):
            def sparse(config=config, raster=raster):
                return cutlass_gemm.sparse_mm(values, metadata, w_q, row_scale, None, config, raster,
                                              weight_scale=column_scale)  # fmt: skip
            timed[f"{config.name} {raster_name}"] = (cuda_graph_ms(sparse), sparse, config, raster)
    best = min(timed, key=lambda key: timed[key][0])
    _, _, best_config, best_raster = timed[best]
    float8_weight = Float8Weight(w_q, column_scale)

    def fp8_24_layer():  # the Triton compressor (prune, quantize, compress) + the GEMM with every scale
        values, metadata, row_scale = compress_fp8([x], IDENTITY)
        return cutlass_gemm.sparse_mm(values, metadata, w_q, row_scale, None, best_config, best_raster,
                                      weight_scale=column_scale)  # fmt: skip

    times = {
        "bf16": cuda_graph_ms(lambda: F.linear(x, weight)),
        "fp8": cuda_graph_ms(fp8),
        "fp8_exact": cuda_graph_ms(lambda: fp8(False)),
        "fp8_24": timed[best][0],
        "fp8_layer": cuda_graph_ms(lambda: dense_float8_linear([x], IDENTITY, float8_weight, None)),
        "fp8_24_layer": cuda_graph_ms(fp8_24_layer),
        "quantize": cuda_graph_ms(lambda: quantize_fp8([x], IDENTITY)),
        "compress_fp8": cuda_graph_ms(lambda: compress_fp8([x], IDENTITY)),
        "quantize_two_pass": cuda_graph_ms(lambda: quantize_rows_fp8(x, single_pass=False)),
        "compress_fp8_two_pass": cuda_graph_ms(lambda: prune_quantize_compress_fp8(x, single_pass=False)),
    }
    operands, loader = loading([x], IDENTITY)
    out_values, out_metadata = torch.empty_like(values), torch.empty_like(metadata)
    for pairs in (128, 256, 512):  # the one-pass kernel's block size: pairs of groups a program holds
        times[f"compress_fp8_pairs{pairs}"] = cuda_graph_ms(
            lambda pairs=pairs: single_pass.launch(operands, loader, out_values, out_metadata, True, True, True,
                                                   pairs_per_program=pairs))  # fmt: skip
    times["compress_fp8_read_twice"] = cuda_graph_ms(  # a row in chunks read twice, not kept in registers
        lambda: single_pass.launch(operands, loader, out_values, out_metadata, True, True, True, held_pairs=0))
    for warps in (4, 8, 16):  # a row held (up to K = 16384), in W warps a program
        times[f"compress_fp8_held_warps{warps}"] = cuda_graph_ms(
            lambda warps=warps: single_pass.launch(operands, loader, out_values, out_metadata, True, True, True,
                                                   held_pairs=2048, num_warps=warps))  # fmt: skip
    for registers in (64, 56, 48):  # a thread's registers capped: more programs resident an SM, at the cost of spills
        times[f"compress_fp8_maxnreg{registers}"] = cuda_graph_ms(
            lambda registers=registers: single_pass.launch(operands, loader, out_values, out_metadata, True, True,
                                                           True, max_registers=registers))  # fmt: skip
    # chunks of 64 pairs of groups in 2 warps a program: half the registers a program, so more rows in flight an SM
    times["compress_fp8_pairs64_warps2"] = cuda_graph_ms(
        lambda: single_pass.launch(operands, loader, out_values, out_metadata, True, True, True,
                                   blocks=(1, 64, -(-k // 512)), num_warps=2))  # fmt: skip
    if k > 4096:  # GELU applied on load to all of x, as an MLP down-projection takes it
        gelu = FoldSpec("activation", ("gelu_tanh",))
        times["compress_fp8_gelu"] = cuda_graph_ms(lambda: compress_fp8([x], gelu))
        times["compress_fp8_gelu_two_pass"] = cuda_graph_ms(
            lambda: prune_quantize_compress_fp8(*loading([x], gelu), single_pass=False))
    compressed = compress_fp8([x], IDENTITY)
    operand_bit_exact = all(torch.equal(a.view(torch.uint8), b.view(torch.uint8))
                            for a, b in zip(compressed[:2], (values, metadata)))  # fmt: skip
    reference = fp8_linear_ref(x, weight, method=Method())
    two_pass = prune_quantize_compress_fp8(x, single_pass=False)
    operand_bit_exact = operand_bit_exact and all(torch.equal(a.view(torch.uint8), b.view(torch.uint8))
                                                  for a, b in zip(two_pass[:2], (values, metadata)))  # fmt: skip
    return {
        "shape": name, "M": m, "K": k, "N": n, "config": best, **{f"{p}_ms": t for p, t in times.items()},
        "fp8_24_over_fp8": times["fp8"] / times["fp8_24"],
        "fp8_24_layer_over_fp8_layer": times["fp8_layer"] / times["fp8_24_layer"],
        "fp8_24_layer_over_bf16": times["bf16"] / times["fp8_24_layer"], "operand_bit_exact": operand_bit_exact,
        "fp8_24_layer_rel_err_vs_reference": relative_error(fp8_24_layer(), reference),
        "fp8_24_over_fp8_exact": times["fp8_exact"] / times["fp8_24"],
        "fp8_over_bf16": times["bf16"] / times["fp8"], "fp8_24_over_bf16": times["bf16"] / times["fp8_24"],
        "fp8_24_rel_err_vs_reference": relative_error(timed[best][1](), reference),
        "fp8_rel_err_vs_bf16": relative_error(fp8(), F.linear(x, weight)),
        "all_configs_ms": {key: value[0] for key, value in timed.items()},
    }  # fmt: skip


def main() -> None:
    why = cutlass_gemm.unavailable_reason()
    if why is not None:
        sys.exit(f"lynx's CUTLASS kernels cannot run here: {why}")
    torch.manual_seed(0)
    shapes = [shape for shape in SHAPES if not sys.argv[1:] or any(word in shape[0] for word in sys.argv[1:])]
    rows = []
    for shape in shapes:
        rows.append(bench_shape(*shape))
        print(json.dumps({key: round(value, 4) if isinstance(value, float) else value for key, value in rows[-1].items()
                          if key != "all_configs_ms"}), flush=True)  # fmt: skip
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    with open(os.path.join(os.environ.get("OUT", "/tmp"), "bench_fp8_sparse.json"), "w") as f:
        json.dump({**meta, "rows": rows}, f, indent=1)
    print(f"\n{meta}\n{'shape':18} {'bf16 ms':>8} {'fp8/bf16':>9} {'fp8 2:4/fp8':>11} {'/fp8 exact':>10} "
          f"{'2:4/bf16':>9} {'layer/fp8':>9} {'layer/bf16':>10} {'rel err':>8}  config")  # fmt: skip
    for r in rows:
        print(f"{r['shape']:18} {r['bf16_ms']:8.4f} {r['fp8_over_bf16']:9.2f} {r['fp8_24_over_fp8']:11.2f} "
              f"{r['fp8_24_over_fp8_exact']:10.2f} {r['fp8_24_over_bf16']:9.2f} "
              f"{r['fp8_24_layer_over_fp8_layer']:9.2f} {r['fp8_24_layer_over_bf16']:10.2f} "
              f"{r['fp8_24_layer_rel_err_vs_reference']:8.4f}  {r['config']}")  # fmt: skip
    for column, what in (("fp8_24_over_fp8", "GEMM alone"), ("fp8_24_layer_over_fp8_layer", "whole layer")):
        flux = [r[column] for r in rows if r["shape"].startswith("flux") and "txt" not in r["shape"]]
        if flux:
            print(f"geomean over FLUX shapes, FP8 2:4 over FP8 dense, {what}: "
                  f"{torch.tensor(flux).log().mean().exp().item():.3f}")  # fmt: skip


if __name__ == "__main__":
    main()

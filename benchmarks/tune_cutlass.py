"""Sweep lynx's CUTLASS sparse GEMM over configurations, raster orders and swizzles on given shapes, beside
cuSPARSELt's best algorithm and cuBLAS: where the kernel stands, and which knobs the speed rule should try.

    python benchmarks/tune_cutlass.py [--fp8] [--configs NAME,...] [name ...]
        # sm_90 GPU, nvcc, CUTLASS's headers; writes tune_cutlass[_fp8].json to $OUT

Every configuration in `cutlass_gemm.CONFIGS` (`FP8_CONFIGS` with --fp8) plus those --configs names
(`GemmConfig.parse`, built here if missing: minutes each; tiles swept before and never fastest:
256x128x64_c2x1_coop, 64x256x64_c2x1_pingpong, 256x128x128_c1x2_coop; a name ending `_streamk` takes CUTLASS's
stream-K scheduler), rasters heuristic / along M / along N, swizzle 1, 2, 4, 8; GEMM
alone on a ready operand (bf16: no scale, no bias; --fp8: e4m3 with both scales, against `torch._scaled_mm`
rowwise, fast accumulation; no cuSPARSELt column), CUDA-graph replays, median. Ratios are dense / variant.

A configuration whose tile K differs from the compressor's (`cutlass_layout.TILE_K`) reads the operand's metadata
in another layout: its product is wrong, its time is not (the same bytes move, the same instructions issue), so
such rows say whether a layout for that tile is worth writing, nothing more (marked `timing only`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lynx_compile.kernels import cutlass_gemm  # noqa: E402
from lynx_compile.fp8 import quantize_rows  # noqa: E402
from lynx_compile.kernels.cutlass_gemm import GemmConfig  # noqa: E402
from lynx_compile.kernels.cutlass_layout import TILE_K  # noqa: E402
from lynx_compile.kernels.prune_compress_24 import prune_compress_24, prune_compress_24_cutlass  # noqa: E402
from lynx_compile.kernels.prune_quantize_fp8 import prune_quantize_compress_fp8_ref  # noqa: E402
from lynx_compile.paths.cusparselt import search_algorithm  # noqa: E402
from lynx_compile.timing import cuda_graph_ms  # noqa: E402

SHAPES = [
    ("flux attn out", 4608, 3072, 3072),
    ("flux mlp up", 4608, 3072, 12288),
    ("flux single out", 4608, 15360, 3072),
    ("wan 14k attn", 14040, 5120, 5120),
    ("wan 14k ffn up", 14040, 5120, 13824),
    ("wan 14k ffn down", 14040, 13824, 5120),
    # FLUX's text stream (512 tokens): 4 row tiles of 128, too few CTAs for 132 SMs with 256-column tiles
    ("flux txt attn", 512, 3072, 3072),
    ("flux txt mlp up", 512, 3072, 12288),
    ("flux txt mlp down", 512, 12288, 3072),
]
SWIZZLES = (1, 2, 4, 8)


def gemm_operands(x: torch.Tensor, weight: torch.Tensor, fp8: bool) -> tuple[Callable[[], torch.Tensor], dict]:
    """The dense GEMM of x and W (cuBLAS; with `fp8`, `torch._scaled_mm` rowwise, fast accumulation) and the sparse
    kernel's operands made of the same x and W (`sparse_gemm` takes them)."""
    n = weight.shape[0]
    if fp8:
        x_q, x_scale = quantize_rows(x)
        w_q, w_scale = quantize_rows(weight)
        values, metadata, row_scale = prune_quantize_compress_fp8_ref(x)
        return (lambda: torch._scaled_mm(x_q, w_q.t(), scale_a=x_scale, scale_b=w_scale.reshape(1, n),
                                         out_dtype=torch.bfloat16, use_fast_accum=True),
                {"values": values, "metadata": metadata, "weight": w_q, "scale": row_scale,
                 "weight_scale": w_scale.reshape(n).contiguous()})  # fmt: skip
    values, metadata, _ = prune_compress_24_cutlass(x)
    return (lambda: F.linear(x, weight),
            {"values": values, "metadata": metadata, "weight": weight, "scale": None, "weight_scale": None})


def sparse_gemm(operand: dict, config: GemmConfig, raster: int = 0, swizzle: int = 1) -> torch.Tensor:
    """lynx's CUTLASS sparse GEMM on `gemm_operands`' operands."""
    return cutlass_gemm.sparse_mm(operand["values"], operand["metadata"], operand["weight"], operand["scale"], None,
                                  config, raster, swizzle, weight_scale=operand["weight_scale"])  # fmt: skip


def operands(m: int, k: int, n: int, fp8: bool) -> tuple[dict, dict]:
    """The baselines' callables (dense; cuSPARSELt's best algorithm for bf16) and the sparse kernel's operands for one
    shape, random (never zero) data."""
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    weight = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
    dense, operand = gemm_operands(x, weight, fp8)
    if fp8:
        return {"dense": dense}, operand
    compressed, _ = prune_compress_24(x, pad_rows_to=16)
    algorithm = search_algorithm(compressed, weight.t())
    return {"dense": dense, "cusparselt": lambda: torch._cslt_sparse_mm(compressed, weight.t(), alg_id=algorithm)}, \
        operand  # fmt: skip


def sweep(name: str, m: int, k: int, n: int, configs: tuple[GemmConfig, ...], fp8: bool) -> dict:
    baselines, operand = operands(m, k, n, fp8)
    baseline_ms = {key: cuda_graph_ms(call) for key, call in baselines.items()}
    layout_k = TILE_K[8 if fp8 else 16]
    variants, differs_from_first, first = {}, {}, None
    for config in configs:
        label = config.name + (" (timing only)" if config.tile_k != layout_k else "")
        if config.tile_k == layout_k:  # the first configuration is the tested one; the others must agree with it
            out = sparse_gemm(operand, config)
            first = out if first is None else first
            differs_from_first[config.name] = (out.float() - first.float()).abs().max().item()
        for raster_name, raster in cutlass_gemm.RASTERS.items():
            for swizzle in SWIZZLES:
                def gemm(config=config, raster=raster, swizzle=swizzle):
                    return sparse_gemm(operand, config, raster, swizzle)
                try:
                    variants[f"{label} {raster_name} s{swizzle}"] = cuda_graph_ms(gemm, rep_ms=30)
                except RuntimeError as error:
                    print(f"  {label} {raster_name} s{swizzle}: {error}")
    best = min(variants, key=variants.get)
    dense = baseline_ms["dense"]
    row = {"shape": name, "M": m, "K": k, "N": n, "dense_ms": dense, "best": best, "best_ms": variants[best],
           "x_best": dense / variants[best], "max_abs_difference_from_first_config": differs_from_first,
           "x_by_variant": {key: dense / value for key, value in sorted(variants.items(), key=lambda kv: kv[1])}}
    if "cusparselt" in baseline_ms:
        row.update(cusparselt_ms=baseline_ms["cusparselt"], x_cusparselt=dense / baseline_ms["cusparselt"])
    return row


def main() -> None:
    why = cutlass_gemm.unavailable_reason()
    if why is not None:
        sys.exit(f"lynx's CUTLASS kernels cannot run here: {why}")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="shapes whose name contains one of these words (default: all)")
    parser.add_argument("--fp8", action="store_true", help="the e4m3 kernels against torch._scaled_mm rowwise")
    parser.add_argument("--configs", default="", help="more configurations, comma-separated GemmConfig names")
    args = parser.parse_args()
    extra = tuple(GemmConfig.parse(name) for name in args.configs.split(",") if name)
    configs = (*(cutlass_gemm.FP8_CONFIGS if args.fp8 else cutlass_gemm.CONFIGS), *extra)
    torch.manual_seed(0)
    rows = [sweep(*shape, configs, args.fp8) for shape in SHAPES
            if not args.names or any(word in shape[0] for word in args.names)]  # fmt: skip
    name = "tune_cutlass_fp8.json" if args.fp8 else "tune_cutlass.json"
    with open(os.path.join(os.environ.get("OUT", "/tmp"), name), "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "fp8": args.fp8,
                   "rows": rows}, f, indent=1)  # fmt: skip
    for r in rows:
        top = list(r["x_by_variant"].items())[:5]
        cslt = f"cuSPARSELt {r['x_cusparselt']:.2f}×  " if "x_cusparselt" in r else ""
        print(f"{r['shape']:18} {cslt}CUTLASS best {r['x_best']:.2f}× "
              + "; ".join(f"{key} {value:.2f}" for key, value in top))  # fmt: skip
        per_config = {}
        for key, value in r["x_by_variant"].items():
            per_config.setdefault(key.split()[0], value)
        wrong = {key: value for key, value in r["max_abs_difference_from_first_config"].items() if value}
        if wrong:
            print(f"    outputs differ from {configs[0].name}'s: {wrong}")
        print("    best per configuration: " + ", ".join(f"{key} {value:.2f}" for key, value in per_config.items()))


if __name__ == "__main__":
    main()

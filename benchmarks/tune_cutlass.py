"""Sweep lynx's CUTLASS sparse GEMM over configurations, raster orders and swizzles on given shapes, beside
cuSPARSELt's best algorithm and cuBLAS: where the kernel stands, and which knobs the speed rule should try.

    python benchmarks/tune_cutlass.py [name ...]   # sm_90 GPU, nvcc, CUTLASS's headers; writes tune_cutlass.json to $OUT

Every configuration in `cutlass_gemm.CONFIGS` plus `EXTRA` (built here if missing), rasters heuristic / along M /
along N, swizzle 1, 2, 4, 8; GEMM alone on a ready operand (bf16, no scale, no bias), CUDA-graph replays, median.
Ratios are cuBLAS / variant.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lynx_compile.kernels import cutlass_gemm  # noqa: E402
from lynx_compile.kernels.cutlass_gemm import GemmConfig  # noqa: E402
from lynx_compile.kernels.prune_compress_24 import prune_compress_24, prune_compress_24_cutlass  # noqa: E402
from lynx_compile.paths.cusparselt import search_algorithm  # noqa: E402
from lynx_compile.timing import cuda_graph_ms  # noqa: E402

SHAPES = [
    ("flux attn out", 4608, 3072, 3072),
    ("flux mlp up", 4608, 3072, 12288),
    ("flux single out", 4608, 15360, 3072),
    ("wan 14k attn", 14040, 5120, 5120),
    ("wan 14k ffn up", 14040, 5120, 13824),
    ("wan 14k ffn down", 14040, 13824, 5120),
]
EXTRA = (GemmConfig(256, 128, 64, 2, 1), GemmConfig(64, 256, 64, 2, 1, pingpong=True))  # swept, not tuned over
SWIZZLES = (1, 2, 4, 8)


def sweep(name: str, m: int, k: int, n: int) -> dict:
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    weight = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
    values, metadata, _ = prune_compress_24_cutlass(x)
    operand, _ = prune_compress_24(x, pad_rows_to=16)
    algorithm = search_algorithm(operand, weight.t())
    dense = cuda_graph_ms(lambda: F.linear(x, weight))
    cslt = cuda_graph_ms(lambda: torch._cslt_sparse_mm(operand, weight.t(), alg_id=algorithm))
    variants = {}
    for config in (*cutlass_gemm.CONFIGS, *EXTRA):
        for raster_name, raster in cutlass_gemm.RASTERS.items():
            for swizzle in SWIZZLES:
                def gemm(config=config, raster=raster, swizzle=swizzle):
                    return cutlass_gemm.sparse_mm(values, metadata, weight, None, None, config, raster, swizzle)
                try:
                    variants[f"{config.name} {raster_name} s{swizzle}"] = cuda_graph_ms(gemm, rep_ms=30)
                except RuntimeError as error:
                    print(f"  {config.name} {raster_name} s{swizzle}: {error}")
    best = min(variants, key=variants.get)
    return {"shape": name, "M": m, "K": k, "N": n, "dense_ms": dense, "cusparselt_ms": cslt,
            "cusparselt_algorithm": algorithm, "best": best, "best_ms": variants[best],
            "x_cusparselt": dense / cslt, "x_best": dense / variants[best],
            "x_by_variant": {key: dense / value for key, value in sorted(variants.items(), key=lambda kv: kv[1])}}


def main() -> None:
    why = cutlass_gemm.unavailable_reason()
    if why is not None:
        sys.exit(f"lynx's CUTLASS kernels cannot run here: {why}")
    torch.manual_seed(0)
    rows = [sweep(*shape) for shape in SHAPES if not sys.argv[1:] or any(word in shape[0] for word in sys.argv[1:])]
    with open(os.path.join(os.environ.get("OUT", "/tmp"), "tune_cutlass.json"), "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=1)
    for r in rows:
        top = list(r["x_by_variant"].items())[:5]
        print(f"{r['shape']:18} cuSPARSELt {r['x_cusparselt']:.2f}×  CUTLASS best {r['x_best']:.2f}× "
              + "; ".join(f"{key} {value:.2f}" for key, value in top))  # fmt: skip
        per_config = {}
        for key, value in r["x_by_variant"].items():
            per_config.setdefault(key.split()[0], value)
        print("    best per configuration: " + ", ".join(f"{key} {value:.2f}" for key, value in per_config.items()))


if __name__ == "__main__":
    main()

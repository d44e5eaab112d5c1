"""Issue 12 item 7, measured: a sparse GEMM that prunes its own operand in registers (`probes/prune_gemm_sm90.cu`)
against the two-kernel CUTLASS path (one-pass compressor → CUTLASS sparse GEMM, s and b in its epilogue) and cuBLAS.

    python benchmarks/bench_prune_in_gemm.py [--json out.json] [--diagnostics]   # sm_90 GPU, nvcc, nvidia-cutlass

First the check: the kernel's Y against the pure-torch reference (`nm_prune_ref`, fp32 GEMM, s, b) on small-integer
inputs, where ties are common and the GEMM is exact in fp32, so a wrong pick shows as a whole-integer error; odd M,
N, K (TMA fills past the edges with zeros), rows holding inf and NaN. Then per shape (bf16, with bias, CUDA-graph
replay, median): dense `F.linear`; `lynx_cutlass`: compressor + the CUTLASS GEMM at its best configuration, raster
order and swizzle; `cutlass_gemm_only`: that GEMM on a ready operand; `prune_in_gemm`: the one kernel. Ratios are
dense / variant. `--diagnostics` also times, on three of the shapes, the kernel built without the ranking (the kept
pair is each group's first two members) and without the shared-memory loads as well (constant A): where its time
goes. Their results are wrong by design; only their speed is read.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lynx_compile.folds import IDENTITY  # noqa: E402
from lynx_compile.kernels import cutlass_gemm  # noqa: E402
from lynx_compile.kernels.nm_prune import nm_prune_ref  # noqa: E402
from lynx_compile.paths.cutlass import _gemm, fastest_setting  # noqa: E402
from lynx_compile.timing import cuda_graph_ms  # noqa: E402

SOURCE = Path(__file__).resolve().parent / "probes" / "prune_gemm_sm90.cu"
SHAPES = [
    ("flux attn out", 4608, 3072, 3072),
    ("flux qkv", 4608, 3072, 9216),
    ("flux mlp up", 4608, 3072, 12288),
    ("flux mlp down", 4608, 12288, 3072),
    ("flux single out", 4608, 15360, 3072),
    ("wan 14b attn", 14040, 5120, 5120),
    ("wan 14b mlp up", 14040, 5120, 13824),
    ("wan 14b mlp down", 14040, 13824, 5120),
]
DIAGNOSTICS = {"without_ranking": "-DLYNX_PROBE_NO_RANKING", "without_loads_or_ranking": "-DLYNX_PROBE_NO_LOAD"}
CHECKS = [(1, 64, 256), (77, 136, 250), (130, 200, 512), (300, 3072, 3072), (4608, 1024, 264)]


def build(element: int, *defines: str) -> ctypes.CDLL:
    output = Path(tempfile.mkdtemp()) / f"prune_gemm_{element}.so"
    include = cutlass_gemm.cutlass_include()
    command = [cutlass_gemm.nvcc(), "-O3", "-std=c++17", "-gencode", "arch=compute_90a,code=sm_90a", "-shared",
               "-Xcompiler", "-fPIC", "--expt-relaxed-constexpr", "-DNDEBUG", f"-I{include}",
               f"-DLYNX_ELEMENT={element}", *defines, "-o", str(output), str(SOURCE)]  # fmt: skip
    subprocess.run(command, check=True)
    library = ctypes.CDLL(str(output))
    p, i = ctypes.c_void_p, ctypes.c_int
    library.lynx_prune_gemm.argtypes = [p, i, p, p, p, i, i, i, p]
    library.lynx_prune_gemm.restype = i
    return library


def prune_gemm(library: ctypes.CDLL, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               out: torch.Tensor) -> torch.Tensor:  # fmt: skip
    m, k = x.shape
    status = library.lynx_prune_gemm(x.data_ptr(), x.stride(0), weight.data_ptr(),
                                     bias.data_ptr() if bias is not None else None, out.data_ptr(), m,
                                     weight.shape[0], k, torch.cuda.current_stream().cuda_stream)  # fmt: skip
    if status:
        raise RuntimeError(f"lynx_prune_gemm returned {status}")
    return out


def reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    pruned, scale = nm_prune_ref(x)
    y = (pruned.float() @ weight.float().T) * scale[:, None]
    return (y + bias.float() if bias is not None else y).to(x.dtype)


def check(libraries: dict[torch.dtype, ctypes.CDLL]) -> list[dict]:
    rows = []
    for dtype, library in libraries.items():
        for m, k, n in CHECKS:
            x = torch.randint(-4, 5, (m, k), device="cuda").to(dtype)
            weight = torch.randint(-3, 4, (n, k), device="cuda").to(dtype)
            bias = torch.randint(-8, 9, (n,), device="cuda").to(dtype)
            if m > 4:
                x[1, 5] = float("inf")
                x[3, 7] = float("nan")
                x[2] = 0
            y = prune_gemm(library, x, weight, bias, torch.full((m, n), 7.0, device="cuda", dtype=dtype))
            expected = reference(x, weight, bias)
            finite = torch.isfinite(expected)
            same_nonfinite = bool(torch.equal(torch.isnan(y), torch.isnan(expected))
                                  and torch.equal(torch.isinf(y), torch.isinf(expected)))  # fmt: skip
            error = (y.float() - expected.float())[finite].abs()
            bound = (expected.float()[finite].abs() * 2 ** -7 + 1e-3)  # one rounding of Y apart, at most
            rows.append({"dtype": str(dtype), "m": m, "k": k, "n": n, "max_error": float(error.max()),
                         "within_one_rounding": bool((error <= bound).all()), "same_nonfinite": same_nonfinite})
    return rows


def operands(m: int, k: int, n: int) -> tuple[torch.Tensor, ...]:
    """x, W, b of a bf16 layer (random, never zero) and Y's buffer."""
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    weight = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * k ** -0.5
    bias = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    return x, weight, bias, torch.empty(m, n, device="cuda", dtype=torch.bfloat16)


def time_shape(library: ctypes.CDLL, name: str, m: int, k: int, n: int) -> dict:
    x, weight, bias, out = operands(m, k, n)
    compress = torch.ops.lynx.prune_compress_24_cutlass.default
    values, metadata, scale = compress([x], IDENTITY.encode())
    setting = fastest_setting(lambda setting: _gemm(values, metadata, weight, scale, bias, setting),
                              cutlass_gemm.CONFIGS, cuda_graph_ms)  # fmt: skip

    def two_kernels():
        return _gemm(*compress([x], IDENTITY.encode()), weight, bias, setting)

    fused = prune_gemm(library, x, weight, bias, out)
    error = float((fused.float() - two_kernels().float()).abs().max())
    times = {"dense": cuda_graph_ms(lambda: F.linear(x, weight, bias)), "lynx_cutlass": cuda_graph_ms(two_kernels),
             "cutlass_gemm_only": cuda_graph_ms(lambda: _gemm(values, metadata, weight, scale, bias, setting)),
             "prune_in_gemm": cuda_graph_ms(lambda: prune_gemm(library, x, weight, bias, out))}  # fmt: skip
    flops = 2 * m * n * k
    return {"shape": name, "m": m, "k": k, "n": n, "cutlass_setting": setting, "max_diff_vs_two_kernels": error,
            "ms": times, "ratio_over_dense": {key: times["dense"] / value for key, value in times.items()},
            "dense_tflops": flops / times["dense"] / 1e9,
            "prune_in_gemm_over_lynx_cutlass": times["lynx_cutlass"] / times["prune_in_gemm"]}  # fmt: skip


def diagnose(library: ctypes.CDLL) -> list[dict]:
    """The kernel and its diagnostic builds (wrong results, speed only) over dense, on three shapes."""
    variants = {"prune_in_gemm": library, **{name: build(0, flag) for name, flag in DIAGNOSTICS.items()}}
    rows = []
    for name, m, k, n in (SHAPES[0], SHAPES[2], SHAPES[5]):
        x, weight, bias, out = operands(m, k, n)
        dense = cuda_graph_ms(lambda: F.linear(x, weight, bias))
        ratios = {variant: dense / cuda_graph_ms(lambda lib=lib: prune_gemm(lib, x, weight, bias, out))
                  for variant, lib in variants.items()}  # fmt: skip
        rows.append({"shape": name, "m": m, "k": k, "n": n, "dense_ms": dense, "ratio_over_dense": ratios})
        print(f"{name:18s} " + "  ".join(f"{variant} {ratio:.3f}" for variant, ratio in ratios.items()), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", type=Path)
    parser.add_argument("--diagnostics", action="store_true")
    args = parser.parse_args()
    libraries = {torch.bfloat16: build(0), torch.float16: build(1)}
    checks = check(libraries)
    for row in checks:
        print(row)
    shapes = []
    for name, m, k, n in SHAPES:
        row = time_shape(libraries[torch.bfloat16], name, m, k, n)
        shapes.append(row)
        ratio = row["ratio_over_dense"]
        print(f"{name:18s} dense {row['ms']['dense'] * 1e3:7.1f} µs  lynx_cutlass {ratio['lynx_cutlass']:.3f}  "
              f"gemm_only {ratio['cutlass_gemm_only']:.3f}  prune_in_gemm {ratio['prune_in_gemm']:.3f}  "
              f"(over two kernels {row['prune_in_gemm_over_lynx_cutlass']:.3f}; "
              f"diff {row['max_diff_vs_two_kernels']:.3g})", flush=True)  # fmt: skip
    diagnostics = diagnose(libraries[torch.bfloat16]) if args.diagnostics else []
    if args.json:
        args.json.write_text(json.dumps({"device": torch.cuda.get_device_name(), "checks": checks, "shapes": shapes,
                                         "diagnostics": diagnostics}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()

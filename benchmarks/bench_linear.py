"""One sparsified linear, whole, against cuBLAS: does 2:4 activation sparsity pay on this GPU, per shape?

    python benchmarks/bench_linear.py [name ...]   # on an sm_90 GPU; shapes whose name contains a word (default all);
                                                   # prints a table, writes bench_linear.json to $OUT

Per shape (tokens M, K → N, bf16, with bias), all timed in one run as CUDA-graph replays (median of do_bench):
- dense: `F.linear(x, W, b)` (cuBLAS);
- lynx: the one-pass prune + compress kernel → `torch._cslt_sparse_mm` with the algorithm `_cslt_sparse_mm_search`
  picked → norm scale s (reduced from the kernel's partial row energies) and `+ b`, eagerly: the whole layer,
  nothing left out, the epilogue unfused;
- lynx_in_model: the same up to s, without applying s and b, which in a compiled model Inductor fuses into the
  consumer's pointwise kernel (gate, residual add, GELU) at no extra pass over Y;
- lynx_alg0: the same with cuSPARSELt's default algorithm;
- unfused: Inductor-compiled prune reference → `torch._cslt_compress` → `_cslt_sparse_mm` → scale and bias;
- gemm_only: `_cslt_sparse_mm` on a ready compressed operand: the ceiling any fused path can reach;
- prune: the prune+compress kernel alone (its share of `lynx_in_model` is the pruning overhead);
- lynx_lora64: `lynx_in_model` with a rank-64 correction: the two small GEMMs on the dense x, whose sum with the
  sparse GEMM's output joins the fused epilogue (`lora_overhead` is its time over `lynx_in_model`'s);
- gemm_only_k128: the sparse GEMM with K + 128: what folding the rank-64 correction into the sparse GEMM (its r
  columns spread 2:4 into 2r extra K) would cost there, the ceiling of that unbuilt design.
For shapes whose input a GELU produces in the model (MLP down-projections; FLUX's single-block output reads
cat([attention, GELU(MLP)]); Z-Image's SwiGLU silu(a)·b), also the layer with its producer, as a compiled model
runs it:
- dense_producer: the Inductor-compiled producer (writes x) + `F.linear` without bias;
- lynx_unfolded: the same producer, then `lynx_in_model` on the x it wrote;
- lynx_folded: `lynx_in_model` on the producer's inputs: the compressor applies the GELU as it loads them, and x
  is never written (`lynx_compile.folds`);
- producer, prune_folded: the producer alone, the folding compressor alone. `fold_prune_share` is what pruning
  adds to the folded layer beyond the producer pass it replaces: (prune_folded − producer) / lynx_folded.
With lynx's CUTLASS kernel available (`lynx_compile.kernels.cutlass_gemm`: nvcc, the nvidia-cutlass headers):
- cutlass_gemm_only: its GEMM on a ready operand, the best configuration and raster order for the shape;
- lynx_cutlass: the CUTLASS path's whole layer: prune + compress (its layout), GEMM with s and b in its epilogue;
  nothing is left for a consumer to fuse, so it compares with `lynx` and `lynx_in_model` alike;
- lynx_cutlass_folded (shapes with a producer): the same with the producer folded into the compressor;
- prune_cutlass, prune_cutlass_folded: the compressor alone in that layout, as the path runs it (the one-launch
  kernel where it reads X); prune_cutlass_general: the general two-launch kernel on the same x.
Ratios are dense / variant (> 1: faster than dense).
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lynx_compile.folds import IDENTITY, FoldSpec, assemble, compress_cutlass  # noqa: E402
from lynx_compile.kernels import cutlass_gemm  # noqa: E402
from lynx_compile.kernels.prune_compress_24 import prune_compress_24_cutlass  # noqa: E402
from lynx_compile.paths.base import Workload  # noqa: E402
from lynx_compile.paths.cusparselt import Cusparselt, cusparselt_gemm, search_algorithm  # noqa: E402
from lynx_compile.paths.cutlass import Cutlass  # noqa: E402
from lynx_compile.plan import SparseLinearPlan  # noqa: E402
from lynx_compile.timing import cuda_graph_ms  # noqa: E402
from lynx_compile.kernels.nm_prune import nm_prune_ref  # noqa: E402
from lynx_compile.kernels.prune_compress_24 import prune_compress_24  # noqa: E402
from needs_gpu import require_cuda  # noqa: E402
from plots import plot_linear  # noqa: E402

# (name, M, K, N, the input's producer as (its fold, the widths of the fold's inputs) or None): DESIGN.md §3. FLUX.1
# at 1024² is 4096 image + 512 text tokens; Z-Image's SwiGLU feed-forward is w2(silu(w1(x)) · w3(x)), 3840 → 10240.
GELU_TANH = FoldSpec("activation", ("gelu_tanh",))
SHAPES = [
    ("flux attn out", 4608, 3072, 3072, None),
    ("flux qkv", 4608, 3072, 9216, None),
    ("flux mlp up", 4608, 3072, 12288, None),
    ("flux mlp down", 4608, 12288, 3072, (GELU_TANH, (12288,))),
    ("flux single in", 4608, 3072, 21504, None),
    ("flux single out", 4608, 15360, 3072, (FoldSpec("concat", ("none", "gelu_tanh")), (3072, 12288))),
    ("qwen-image mlp up", 4352, 3072, 12288, None),
    ("qwen-image mlp down", 4352, 12288, 3072, (GELU_TANH, (12288,))),
    ("z-image mlp down", 4096, 10240, 3840, (FoldSpec("gated", ("silu",)), (10240, 10240))),
    ("dit-xl b8 qkv", 2048, 1152, 3456, None),
    ("dit-xl b8 mlp up", 2048, 1152, 4608, None),
    ("dit-xl b8 mlp down", 2048, 4608, 1152, (GELU_TANH, (4608,))),
    ("wan 32k ffn up", 32768, 5120, 13824, None),
    ("wan 32k ffn down", 32768, 13824, 5120, (GELU_TANH, (13824,))),
]


@torch.compile
def epilogue(out: torch.Tensor, row_scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return (out.float() * row_scale[:, None] + bias.float()).to(out.dtype)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


CUSPARSELT = Cusparselt()


def linear(inputs, fold: FoldSpec, weight, bias, alg: int):
    """The backend's cuSPARSELt path, whole, as the op runs it (epilogue unfused)."""
    plan = SparseLinearPlan(CUSPARSELT.name, fold=fold, row_multiple=CUSPARSELT.row_multiple,
                            params=(("algorithm", alg),))  # fmt: skip
    return CUSPARSELT.forward(inputs, weight, bias, None, plan)


def bench_producer(m: int, k: int, n: int, producer, alg: int) -> dict:
    """The layer with the GELU (concatenation, gated activation) that produces its input, folded into the
    compressor or not."""
    fold, widths = producer
    inputs = [torch.randn(m, width, device="cuda", dtype=torch.bfloat16) for width in widths]
    weight = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
    produce = torch.compile(lambda *inputs: assemble(list(inputs), fold))
    compress = torch.ops.lynx.prune_compress_24

    times = {
        "dense_producer": cuda_graph_ms(lambda: F.linear(produce(*inputs), weight)),
        "lynx_unfolded": cuda_graph_ms(lambda: cusparselt_gemm([produce(*inputs)], IDENTITY, weight, alg)),
        "lynx_folded": cuda_graph_ms(lambda: cusparselt_gemm(inputs, fold, weight, alg)),
        "producer": cuda_graph_ms(lambda: produce(*inputs)),
        "prune_folded": cuda_graph_ms(lambda: compress(inputs, fold.encode(), 16)),
    }
    folded = linear(inputs, fold, weight, None, alg)
    unfolded = linear([produce(*inputs)], IDENTITY, weight, None, alg)
    return {
        "producer_pieces": fold.encode(), **{f"{p}_ms": t for p, t in times.items()},
        "x_lynx_unfolded": times["dense_producer"] / times["lynx_unfolded"],
        "x_lynx_folded": times["dense_producer"] / times["lynx_folded"],
        "fold_prune_share": (times["prune_folded"] - times["producer"]) / times["lynx_folded"],
        "folded_vs_unfolded_rel_err": relative_error(folded, unfolded),
    }  # fmt: skip


CUTLASS = Cutlass()


def bench_cutlass(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, producer) -> dict:
    """The CUTLASS path's GEMM and whole layer (with its producer folded, where the model has one)."""
    why = cutlass_gemm.unavailable_reason(x.device)
    if why is not None:
        return {"cutlass_unavailable": why}
    (m, k), n = x.shape, weight.shape[0]
    params, _ = CUTLASS.tune(Workload(m, k, n, x.dtype, x.device, True), cuda_graph_ms)
    plan = SparseLinearPlan(CUTLASS.name, params=tuple(sorted(params.items())))
    values, metadata, _ = prune_compress_24_cutlass(x)
    gemm = torch.ops.lynx.cutlass_sparse_mm
    raster, swizzle = cutlass_gemm.RASTERS[params["raster"]], params["swizzle"]
    times = {
        "cutlass_gemm_only": cuda_graph_ms(lambda: gemm(values, metadata, weight, None, None, params["config"], raster,
                                                        swizzle)),
        "lynx_cutlass": cuda_graph_ms(lambda: CUTLASS.forward([x], weight, bias, None, plan)),
        "prune_cutlass": cuda_graph_ms(lambda: compress_cutlass([x], IDENTITY)),
        "prune_cutlass_general": cuda_graph_ms(lambda: prune_compress_24_cutlass(x)),
    }
    pruned, scale = nm_prune_ref(x)
    reference = (pruned.float() @ weight.float().t()) * scale[:, None] + bias.float()
    row = {"cutlass_config": f"{params['config']} {params['raster']} s{swizzle}",
           "lynx_cutlass_rel_err": relative_error(CUTLASS.forward([x], weight, bias, None, plan), reference)}
    if producer:
        fold, widths = producer
        inputs = [torch.randn(m, width, device="cuda", dtype=torch.bfloat16) for width in widths]
        folded = SparseLinearPlan(CUTLASS.name, fold=fold, params=plan.params)
        times["lynx_cutlass_folded"] = cuda_graph_ms(lambda: CUTLASS.forward(inputs, weight, None, None, folded))
        times["prune_cutlass_folded"] = cuda_graph_ms(lambda: compress_cutlass(inputs, fold))
    return {**row, **{f"{p}_ms": t for p, t in times.items()}}


def bench_shape(name: str, m: int, k: int, n: int, producer, prune_compiled) -> dict:
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    weight = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
    bias = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    weight_t = weight.t()

    operand, _ = prune_compress_24(x)
    best_alg = search_algorithm(operand, weight_t)

    def lynx(alg=best_alg):  # the backend's own sparse path, as lowered into compiled graphs
        return linear([x], IDENTITY, weight, bias, alg)

    def lynx_in_model(alg=best_alg):  # up to the epilogue, which Inductor fuses into the consumer
        return cusparselt_gemm([x], IDENTITY, weight, alg)

    lora_a = torch.randn(n, 64, device="cuda", dtype=torch.bfloat16) / 8
    lora_b = torch.randn(64, k, device="cuda", dtype=torch.bfloat16) / k**0.5

    def lynx_lora64():  # the sum with s·out + b is the epilogue's, fused into the consumer like b alone
        out, scale = lynx_in_model()
        return out, scale, torch.mm(torch.mm(x, lora_b.t()), lora_a.t())

    def lynx_lora64_whole():
        out, scale, correction = lynx_lora64()
        return out.float() * scale[:, None] + bias.float() + correction.float()

    wide_operand, _ = prune_compress_24(torch.randn(m, k + 128, device="cuda", dtype=torch.bfloat16))
    wide_weight_t = torch.randn(n, k + 128, device="cuda", dtype=torch.bfloat16).t()
    wide_alg = search_algorithm(wide_operand, wide_weight_t)

    def unfused():
        pruned, row_scale = prune_compiled(x)
        return epilogue(torch._cslt_sparse_mm(torch._cslt_compress(pruned), weight_t), row_scale, bias)

    pruned, ref_scale = nm_prune_ref(x)
    reference = (pruned.float() @ weight.float().t()) * ref_scale[:, None] + bias.float()
    times = {
        "dense": cuda_graph_ms(lambda: F.linear(x, weight, bias)),
        "lynx": cuda_graph_ms(lynx),
        "lynx_in_model": cuda_graph_ms(lynx_in_model),
        "lynx_alg0": cuda_graph_ms(lambda: lynx_in_model(0)),
        "unfused": cuda_graph_ms(unfused),
        "gemm_only": cuda_graph_ms(lambda: torch._cslt_sparse_mm(operand, weight_t, alg_id=best_alg)),
        "prune": cuda_graph_ms(lambda: prune_compress_24(x)),
        "lynx_lora64": cuda_graph_ms(lynx_lora64),
        "gemm_only_k128": cuda_graph_ms(lambda: torch._cslt_sparse_mm(wide_operand, wide_weight_t, alg_id=wide_alg)),
    }
    lora_reference = reference + (x.float() @ lora_b.float().t()) @ lora_a.float().t()
    cutlass = bench_cutlass(x, weight, bias, producer)
    producer_row = bench_producer(m, k, n, producer, best_alg) if producer else {}
    for variant in ("cutlass_gemm_only", "lynx_cutlass"):
        if f"{variant}_ms" in cutlass:
            cutlass[f"x_{variant}"] = times["dense"] / cutlass[f"{variant}_ms"]
    if "lynx_cutlass_folded_ms" in cutlass:
        cutlass["x_lynx_cutlass_folded"] = producer_row["dense_producer_ms"] / cutlass["lynx_cutlass_folded_ms"]
    return {
        "shape": name, "M": m, "K": k, "N": n, "best_alg": best_alg,
        **{f"{p}_ms": t for p, t in times.items()},
        **{f"x_{p}": times["dense"] / t for p, t in times.items() if p not in ("dense", "prune")},
        "prune_share": times["prune"] / times["lynx_in_model"],
        "lora_overhead": times["lynx_lora64"] / times["lynx_in_model"] - 1,
        "k128_overhead": times["gemm_only_k128"] / times["gemm_only"] - 1,
        "lynx_rel_err": relative_error(lynx(), reference),
        "lynx_lora64_rel_err": relative_error(lynx_lora64_whole(), lora_reference),
        "dense_tflops": 2 * m * k * n / times["dense"] / 1e9,
        **producer_row, **cutlass,
    }  # fmt: skip


def main() -> None:
    require_cuda()
    torch.manual_seed(0)
    prune_compiled = torch.compile(nm_prune_ref)
    rows = []
    shapes = [shape for shape in SHAPES if not sys.argv[1:] or any(word in shape[0] for word in sys.argv[1:])]
    for name, m, k, n, producer in (bar := tqdm(shapes, desc="bench_linear", unit="shape")):
        bar.set_postfix_str(name)
        row = bench_shape(name, m, k, n, producer, prune_compiled)
        rows.append(row)
        tqdm.write(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}))
    out_dir = os.environ.get("OUT", "/tmp")
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    with open(os.path.join(out_dir, "bench_linear.json"), "w") as f:
        json.dump({**meta, "rows": rows}, f, indent=1)
    plot_linear(rows, f"{meta['device']}, torch {meta['torch']}, bf16", os.path.join(out_dir, "bench_linear.png"))
    flux = [r for r in rows if r["shape"].startswith("flux")]
    geomean = torch.tensor([r["x_lynx"] for r in flux]).log().mean().exp().item()
    geomean_in_model = torch.tensor([r["x_lynx_in_model"] for r in flux]).log().mean().exp().item()
    print(f"\n{meta}\n{'shape':22} {'dense ms':>9} {'lynx ×':>7} {'in-model ×':>10} {'alg0 ×':>7} {'unfused ×':>9} "
          f"{'ceiling ×':>9} {'prune %':>8} {'alg':>4} {'LoRA64 +%':>9} {'K+128 +%':>8}")  # fmt: skip
    for r in rows:
        print(f"{r['shape']:22} {r['dense_ms']:9.4f} {r['x_lynx']:7.2f} {r['x_lynx_in_model']:10.2f} "
              f"{r['x_lynx_alg0']:7.2f} {r['x_unfused']:9.2f} {r['x_gemm_only']:9.2f} {100 * r['prune_share']:8.1f} "
              f"{r['best_alg']:>4} {100 * r['lora_overhead']:9.1f} {100 * r['k128_overhead']:8.1f}")  # fmt: skip
    print(f"geomean over FLUX shapes: lynx × {geomean:.3f}, in-model × {geomean_in_model:.3f}")
    print(f"\nwith the producer of x (GELU, concatenation) in the timing\n{'shape':22} {'pieces':>24} "
          f"{'dense ms':>9} {'unfolded ×':>10} {'folded ×':>9} {'producer ms':>11} {'prune ms':>9} {'prune %':>8}")
    for r in (r for r in rows if "producer_pieces" in r):
        print(f"{r['shape']:22} {r['producer_pieces']:>24} {r['dense_producer_ms']:9.4f} {r['x_lynx_unfolded']:10.2f} "
              f"{r['x_lynx_folded']:9.2f} {r['producer_ms']:11.4f} {r['prune_folded_ms']:9.4f} "
              f"{100 * r['fold_prune_share']:8.1f}")  # fmt: skip
    # FLUX in the model: the folded layer where the model has a producer, in-model (bias fused) elsewhere
    in_model = [r.get("x_lynx_folded", r["x_lynx_in_model"]) for r in flux]
    print(f"geomean over FLUX shapes as compiled (folded where the model has a producer): "
          f"{torch.tensor(in_model).log().mean().exp().item():.3f}")
    if any("lynx_cutlass_ms" in r for r in rows):
        print(f"\nCUTLASS\n{'shape':22} {'config':28} {'GEMM ×':>7} {'cuSPARSELt GEMM ×':>17} {'layer ×':>8} "
              f"{'folded ×':>9} {'rel err':>8}")  # fmt: skip
        for r in (r for r in rows if "lynx_cutlass_ms" in r):
            folded = f"{r['x_lynx_cutlass_folded']:9.2f}" if "x_lynx_cutlass_folded" in r else f"{'':9}"
            print(f"{r['shape']:22} {r['cutlass_config']:28} {r['x_cutlass_gemm_only']:7.2f} {r['x_gemm_only']:17.2f} "
                  f"{r['x_lynx_cutlass']:8.2f} {folded} {r['lynx_cutlass_rel_err']:8.4f}")  # fmt: skip
        whole = [r.get("x_lynx_cutlass_folded", r["x_lynx_cutlass"]) for r in flux if "x_lynx_cutlass" in r]
        print(f"geomean over FLUX shapes, CUTLASS layer as compiled (folded where the model has a producer): "
              f"{torch.tensor(whole).log().mean().exp().item():.3f}")


if __name__ == "__main__":
    main()

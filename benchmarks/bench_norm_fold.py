"""The norm fold as the speed rule sees it: a layer (or sibling group) fed by a modulated LayerNorm, timed with the
norm and modulation applied on load by the compressor, and with x written out first by one kernel, each against
dense with x written by one kernel (Inductor's way; t's row statistics are taken as given on every side, as
Inductor fuses them into the kernel that writes t).

    python benchmarks/bench_norm_fold.py [name ...]   # sm_90 GPU; writes bench_norm_fold.json to $OUT

Each path the speed rule may pick (cuSPARSELt, CUTLASS; CUTLASS FP8 against rowwise FP8 dense for torchao float8
layers), through `paths.measure` itself, so the figures are the rule's own. Ratios are dense / variant.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lynx_compile.folds import FoldSpec  # noqa: E402
from lynx_compile.method import Method  # noqa: E402
from lynx_compile.paths import Workload, get_path, measure  # noqa: E402

MODULATED = FoldSpec("norm", ("layer", "none", "one_plus_a", "c"))  # LayerNorm(t) · (1 + scale) + shift
# (name, M, K, each member's N, fold)
SHAPES = [
    ("flux double qkv", 4096, 3072, (3072, 3072, 3072), MODULATED),
    ("flux double mlp up", 4096, 3072, (12288,), MODULATED),
    ("flux single in", 4608, 3072, (3072, 3072, 3072, 12288), MODULATED),
    ("wan qkv", 14040, 5120, (5120, 5120, 5120), MODULATED),
    ("wan ffn up", 14040, 5120, (13824,), MODULATED),
]
PATHS = (("cusparselt", False), ("cutlass", False), ("cutlass_float8", True))


def workload(m: int, k: int, members: tuple[int, ...], fold: FoldSpec, float8: bool, written: bool) -> Workload:
    return Workload(m, k, sum(members), torch.bfloat16, torch.device("cuda", 0), True, fold, (k, 1, 1, k, k), 0,
                    members if len(members) > 1 else (), False, float8, written, (m, m, m, 1, 1))  # fmt: skip


def main() -> None:
    shapes = [shape for shape in SHAPES if not sys.argv[1:] or any(word in shape[0] for word in sys.argv[1:])]
    rows = []
    print(f"{'shape':20} {'path':15} {'dense ms':>9} {'on load ×':>10} {'written ×':>10} {'x alone ×':>10}")
    for name, m, k, members, fold in shapes:
        for path_name, float8 in PATHS:
            path = get_path(path_name)
            folded = workload(m, k, members, fold, float8, False)
            why = path.unavailable_reason(folded, Method())
            if why is not None:
                print(f"{name:20} {path_name:15} unavailable: {why}")
                continue
            on_load, written = measure(path, folded), measure(path, replace(folded, written=True))
            plain = measure(path, replace(folded, fold=FoldSpec(), input_widths=(), input_rows=()))
            row = {"shape": name, "path": path_name, "M": m, "K": k, "members": members, "fold": fold.encode(),
                   "dense_ms": on_load.dense_ms, "on_load_ms": on_load.sparse_ms, "written_ms": written.sparse_ms,
                   "x_on_load": on_load.speedup, "x_written": written.speedup,
                   "plain_dense_ms": plain.dense_ms, "plain_ms": plain.sparse_ms, "x_plain": plain.speedup}
            rows.append(row)
            print(f"{name:20} {path_name:15} {on_load.dense_ms:9.4f} {on_load.speedup:10.3f} {written.speedup:10.3f} "
                  f"{plain.speedup:10.3f}", flush=True)  # fmt: skip
    out = os.environ.get("OUT", ".")
    with open(os.path.join(out, "bench_norm_fold.json"), "w") as handle:
        json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()

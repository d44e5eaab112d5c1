"""The speed rule's own measurement of one layer, repeated: how far its figure moves from one timing to the next.

    python benchmarks/probe_speed_rule.py     # an sm_90 GPU with lynx's CUTLASS kernels

FLUX's single-block output projection (4608 tokens, x = cat(attention 3072, GELU(MLP 12288)) → 3072, bf16), the
layer whose no-graph decision flipped between runs (benchmarks/RESULTS.md, session 15): `measurements._time` twice
for each graph mode, with the producer folded and written out first, on the CUTLASS and cuSPARSELt paths (dense and
sparse ms, the ratio, the setting picked); then its pieces timed both ways (host time included, CUDA-graph replay):
the compressor as the rule runs it, the producer written by eager ops, the dense GEMM.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lynx_compile.folds import FoldSpec, load  # noqa: E402
from lynx_compile.paths import get_path, measurements  # noqa: E402
from lynx_compile.paths.base import Workload  # noqa: E402
from lynx_compile.paths.lowered_compressors import as_lowered_cutlass  # noqa: E402
from lynx_compile.timing import cuda_graph_ms, host_included_ms  # noqa: E402
from needs_gpu import require_cuda  # noqa: E402

TOKENS, PIECES, N = 4608, (3072, 12288), 3072
FOLD = FoldSpec("concat", ("none", "gelu_tanh"))


def main() -> None:
    require_cuda()
    device = torch.device("cuda")
    for graphs in (False, True):
        for written in (False, True):
            workload = Workload(TOKENS, sum(PIECES), N, torch.bfloat16, device, graphs, FOLD, PIECES, written=written)
            for name in ("cutlass", "cusparselt"):
                for _ in range(2):
                    m = measurements._time(get_path(name), workload)
                    print(f"graphs={graphs} written={written} {name:10} dense {m.dense_ms:.4f} sparse "
                          f"{m.sparse_ms:.4f} {m.speedup:.3f} {dict(m.params) if name == 'cutlass' else ''}",
                          flush=True)  # fmt: skip
    inputs = [torch.randn(TOKENS, width, device=device, dtype=torch.bfloat16) for width in PIECES]
    weight = torch.randn(N, sum(PIECES), device=device, dtype=torch.bfloat16) / sum(PIECES) ** 0.5
    x = load(inputs, FOLD)
    # each piece as the rule runs it without CUDA graphs, then with (the compressor: replayed from a CUDA graph of
    # its own, which cannot be captured again, or launched)
    pieces = {"compressor, as the rule runs it": (as_lowered_cutlass(inputs, FOLD, replayed=True),
                                                  as_lowered_cutlass(inputs, FOLD)),
              "producer written (eager ops)": (lambda: load(inputs, FOLD),) * 2,
              "dense GEMM (F.linear)": (lambda: F.linear(x, weight),) * 2}  # fmt: skip
    for label, (without_graphs, with_graphs) in pieces.items():
        print(f"{label:32} host included {host_included_ms(without_graphs, device=device):.4f} ms, "
              f"CUDA-graph replay {cuda_graph_ms(with_graphs, rep_ms=20):.4f} ms", flush=True)


if __name__ == "__main__":
    main()

"""Time the N:M prune kernel (prune + norm scale, X read once) against torch's ways of doing the same.

    python benchmarks/bench_prune.py            # on a CUDA GPU; prints a table, writes bench_prune.json into $OUT

Providers, per shape (tokens M × K, bf16, 2:4):
- lynx: the Triton kernel `nm_prune_triton`;
- torch_compiled: the pure-torch reference `nm_prune_ref` under torch.compile (what Inductor makes of it);
- copy: x.clone(), a floor: reading X and writing X once.
Times are CUDA-graph replays (`lynx_compile.timing.cuda_graph_ms`: 10 calls a replay, median), so launch overhead
is out. The pruning must
read 2·M·K bytes and write 2·M·K + 4·M: the `TB/s` column counts exactly those bytes.
"""

from __future__ import annotations

import json
import os
import sys

import torch
from tqdm.auto import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lynx_compile.timing import cuda_graph_ms  # noqa: E402
from lynx_compile.kernels.nm_prune import nm_prune_ref, nm_prune_triton  # noqa: E402

# (name, M, K) from DESIGN.md §3: the K of each sparsified linear is what the pruning sees.
SHAPES = [
    ("dit-xl b8 (K=1152)", 2048, 1152),
    ("flux qkv/fc1 (K=3072)", 4608, 3072),
    ("flux fc2 (K=12288)", 4608, 12288),
    ("flux single lin2 (K=15360)", 4608, 15360),
    ("wan ffn2 32k (K=13824)", 32768, 13824),
]


def main() -> None:
    torch.manual_seed(0)
    compiled_ref = torch.compile(nm_prune_ref)
    rows = []
    for name, m_tokens, k in tqdm(SHAPES, desc="bench_prune", unit="shape"):
        x = torch.randn(m_tokens, k, device="cuda", dtype=torch.bfloat16)
        assert torch.equal(nm_prune_triton(x)[0], nm_prune_ref(x)[0]), name
        times = {
            "lynx": cuda_graph_ms(lambda: nm_prune_triton(x)),
            "torch_compiled": cuda_graph_ms(lambda: compiled_ref(x)),
            "copy": cuda_graph_ms(lambda: x.clone()),
        }
        moved = 4 * m_tokens * k + 4 * m_tokens
        row = {"shape": name, "M": m_tokens, "K": k, **{f"{p}_ms": t for p, t in times.items()},
               "lynx_TBps": moved / times["lynx"] / 1e9,
               "copy_TBps": 4 * m_tokens * k / times["copy"] / 1e9}  # fmt: skip
        rows.append(row)
        tqdm.write(json.dumps(row))
    out_dir = os.environ.get("OUT", "/tmp")
    with open(os.path.join(out_dir, "bench_prune.json"), "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=1)
    print(f"\n{'shape':28} {'lynx ms':>8} {'compiled ms':>12} {'copy ms':>8} {'lynx TB/s':>10} {'× compiled':>10}")
    for r in rows:
        print(f"{r['shape']:28} {r['lynx_ms']:8.4f} {r['torch_compiled_ms']:12.4f} {r['copy_ms']:8.4f} "
              f"{r['lynx_TBps']:10.2f} {r['torch_compiled_ms'] / r['lynx_ms']:10.2f}")  # fmt: skip


if __name__ == "__main__":
    main()

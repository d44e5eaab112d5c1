"""Per-layer 2:4 sensitivity of full-size FLUX.1 and Qwen-Image configs with random weights (GPU, bf16).

    python benchmarks/calibrate_full_size.py [flux|qwen|all]     # writes calibrate_<model>.json into $OUT

Runs `lynx_compile.calibrate` (target 0.2) on one random input at 1024² (4096 image tokens; 512 text tokens for
FLUX, 256 for Qwen-Image) and prints the distribution of the per-layer relative output error, by layer role. It says
how far random weights are from trained ones: compare with the trained tiny DiT in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import os
import re
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lynx_compile  # noqa: E402
from bench_e2e import flux_case, qwen_image_case  # noqa: E402


def qwen_case():
    return qwen_image_case(num_layers=60)  # all of Qwen-Image's blocks


def role(name: str) -> str:
    """The layer's name without block indices: 'transformer_blocks.*.attn.to_q'."""
    return re.sub(r"\.\d+\.", ".*.", name)


def main() -> None:
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    for name, build in {"flux": flux_case, "qwen": qwen_case}.items():
        if which not in (name, "all"):
            continue
        model, inputs = build()
        started = time.perf_counter()
        policy = lynx_compile.calibrate(model, [inputs], target=0.2)
        seconds = time.perf_counter() - started
        by_role: dict[str, list[float]] = {}
        for layer_name, layer in policy.layers.items():
            if layer.error is not None:
                by_role.setdefault(role(layer_name), []).append(layer.error)
        sparse_share = sum(layer.flop_share for layer in policy.layers.values() if layer.decision == "sparse")
        print(f"\n{name}: calibrated in {seconds:.0f} s; target 0.2 → {100 * sparse_share:.1f}% of linear FLOPs, "
              f"model error {policy.model_error:.3f}")  # fmt: skip
        print(f"{'layer role':55} {'n':>4} {'min':>6} {'median':>7} {'max':>6}")
        for layer_role, errors in sorted(by_role.items(), key=lambda item: statistics.median(item[1])):
            print(f"{layer_role:55} {len(errors):4d} {min(errors):6.3f} {statistics.median(errors):7.3f} "
                  f"{max(errors):6.3f}")  # fmt: skip
        with open(os.path.join(os.environ.get("OUT", "/tmp"), f"calibrate_{name}.json"), "w") as f:
            f.write(policy.to_json())
        del model, policy
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

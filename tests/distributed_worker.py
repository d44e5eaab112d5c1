"""One rank of tests/test_distributed.py (run under torchrun with gloo on the CPU): compile the same model on every
rank with a toy sparse path that only rank 0 finds fast, and write what each rank decided."""

import json
import os
import sys

import torch
import torch.distributed as dist
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TRITON_INTERPRET", "1")


def failing_tune(self, workload, timer):  # noqa: ANN001
    raise ValueError("toy: no timer today")


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    os.environ["LYNX_CACHE_DIR"] = os.path.join(out_dir, f"cache{rank}")  # no rank reads another's disk cache
    import lynx_compile
    from lynx_compile.paths import PATHS, clear_measurements, register_path
    from test_registries import ToyPath

    ToyPath.speed["single"] = 1e9 if rank == 0 else 1e-6  # alone, rank 1 would keep every layer dense
    register_path(ToyPath())
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64)).eval()
    x = torch.randn(2, 24, 64)
    shared = lynx_compile.explain(model, x, options={"execution": "sparse"})
    tuned_when_shared = ToyPath.calls["tune"]
    os.environ["LYNX_SHARE_MEASUREMENTS"] = "0"
    clear_measurements()
    alone = lynx_compile.explain(model, x, options={"execution": "sparse"})
    os.environ["LYNX_SHARE_MEASUREMENTS"] = "1"
    clear_measurements()
    torch._dynamo.reset()  # else rank 1's new shape would make Dynamo trace it with a symbolic M
    # a sequence that does not split evenly: rank 1 holds a few tokens more, and still takes rank 0's measurement
    uneven = lynx_compile.explain(model, torch.randn(2, 24 + 3 * rank, 64), options={"execution": "sparse"})
    clear_measurements()
    ToyPath.tune = failing_tune  # rank 0 cannot measure: no rank may wait in the broadcast; all compile it dense
    failed = lynx_compile.explain(model, torch.randn(2, 40, 64), options={"execution": "sparse"})  # never measured
    result = {
        "shared": [layer.decision for layer in shared.layers], "tuned_when_shared": tuned_when_shared,
        "alone": [layer.decision for layer in alone.layers],
        "uneven": [[layer.decision, layer.tokens] for layer in uneven.layers], "failed": [[layer.decision, layer.reason] for layer in failed.layers],
    }  # fmt: skip
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    del PATHS["toy"]
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])

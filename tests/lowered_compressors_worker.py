"""Traces the lowered compressors (`paths/lowered_compressors.py`) on fake tensors, with Triton's kernels compiled
rather than interpreted (as on a GPU: under the interpreter nothing is recorded), and beside each traced launch the
launch the eager kernel op makes on real tensors of the same layout, recorded instead of run. Prints JSON, one
entry a case: what the graph holds (the recorded kernel and its arguments, the tensors Inductor's analysis of its
Triton IR takes it to write, or the op it kept) and the eager launch. Run by `test_lowered_compressors.py` in a
process of its own: the interpreter is chosen when kernels are decorated.
"""

import json
import sys

import torch
import triton
from torch._higher_order_ops.triton_kernel_wrap import get_mutated_tensors, kernel_side_table
from torch.fx.experimental.proxy_tensor import make_fx
from triton.backends.compiler import GPUTarget

from lynx_compile.folds import FoldSpec, compress_cutlass, compress_fp8, loading
from lynx_compile.kernels import launcher, prune_compress_24_single_pass, quantize_fp8_single_pass
from lynx_compile.paths import lowered_compressors


class Recorded:
    """Stands in for a kernel in `launcher`: records the grid and arguments of the eager launch."""

    calls: list = []

    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        def call(*args, **kwargs):
            names = self.kernel.arg_names
            Recorded.calls.append({"kernel": self.kernel.fn.__name__, "grid": [*grid, 1, 1][:3],
                                   "args": {**dict(zip(names, args)), **kwargs}})  # fmt: skip

        return call


def describe(value):
    """An argument as the comparison reads it: a tensor by its role (shape, dtype), a number as it is."""
    if isinstance(value, torch.Tensor):
        return ["tensor", list(value.shape), str(value.dtype)]
    if isinstance(value, torch.fx.Node):
        meta = value.meta["val"]
        return ["tensor", list(meta.shape), str(meta.dtype)]
    return value


class Hopper:
    """Stands in for Triton's active driver without a GPU: the target Inductor's analysis generates IR for."""

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)


def written(node) -> list[str]:
    """What Inductor takes the recorded launch to write: the analysis it runs before scheduling the kernel (and
    before deciding whether the graph mutates an input, which costs the graph its CUDA graphs)."""
    arguments = {name: value.meta["val"] if isinstance(value, torch.fx.Node) else value
                 for name, value in node.kwargs["kwargs"].items()}  # fmt: skip
    return sorted(get_mutated_tensors(node.kwargs["kernel_idx"], node.kwargs["constant_args_idx"], arguments,
                                      node.kwargs.get("tma_descriptor_metadata", {})))  # fmt: skip


def traced_case(compress, inputs):
    graph = make_fx(compress, tracing_mode="fake")(*inputs).graph
    launches = [node for node in graph.nodes if node.target is torch.ops.higher_order.triton_kernel_wrapper_mutation]
    ops = sorted(str(node.target) for node in graph.nodes if str(node.target).startswith("lynx."))
    recorded = []
    for node in launches:
        autotuner = kernel_side_table.get_kernel(node.kwargs["kernel_idx"])  # one config: the launch's num_warps
        arguments = {**node.kwargs["kwargs"], **kernel_side_table.get_constant_args(node.kwargs["constant_args_idx"]),
                     "num_warps": autotuner.configs[0].num_warps}  # fmt: skip
        recorded.append({"kernel": autotuner.fn.__name__, "grid": list(node.kwargs["grid"][0]),
                         "args": {name: describe(value) for name, value in arguments.items()},
                         "written": written(node)})  # fmt: skip
    return {"launches": recorded, "ops": ops}


def eager_case(compress, inputs, one_pass, spec):
    """The eager op's launch of the one-pass kernel, recorded; "general" where it takes the general kernel."""
    if not one_pass.applies(*loading(inputs, spec)):
        return "general"
    Recorded.calls = []
    original = launcher.launcher
    launcher.launcher = lambda kernel, traced: Recorded(kernel)
    try:
        compress(*inputs)
    finally:
        launcher.launcher = original
    return [{**call, "args": {name: describe(value) for name, value in call["args"].items()}}
            for call in Recorded.calls]


def main(rows: int) -> None:
    if not torch.cuda.is_available():
        triton.runtime.driver.set_active(Hopper())

    def x(k, dtype=torch.bfloat16):
        return torch.randn(rows, k, dtype=dtype)

    cases = {
        "identity": (FoldSpec("identity", ()), [x(256)]),
        "fp16": (FoldSpec("identity", ()), [x(512, torch.float16)]),
        "gelu": (FoldSpec("activation", ("gelu_tanh",)), [x(384)]),
        "cat, one activation": (FoldSpec("concat", ("none", "none")), [x(128), x(256)]),
        "cat, two activations": (FoldSpec("concat", ("none", "gelu_tanh")), [x(128), x(256)]),
        "cat, two activations, head whole chunks": (FoldSpec("concat", ("none", "gelu_tanh")), [x(1024), x(2048)]),
        "gated": (FoldSpec("gated", ("silu",)), [x(256), x(256)]),
        "view 16 bytes in": (FoldSpec("identity", ()), [x(264)[:, 8:]]),
        "long rows": (FoldSpec("identity", ()), [x(8448)]),  # FP8: past what a program holds, read twice
        "view 8 bytes in": (FoldSpec("identity", ()), [x(260)[:, 4:]]),
    }
    results = {}
    for name, (spec, inputs) in cases.items():
        for kind, lowered, eager, one_pass in (
            ("cutlass", lambda *t: lowered_compressors.compress_cutlass(list(t), spec),
             lambda *t: compress_cutlass(list(t), spec), prune_compress_24_single_pass),
            ("fp8", lambda *t: lowered_compressors.compress_fp8(list(t), spec, True),
             lambda *t: compress_fp8(list(t), spec, True), quantize_fp8_single_pass),
        ):  # fmt: skip
            results[f"{kind}: {name}"] = {**traced_case(lowered, inputs),
                                          "eager": eager_case(eager, inputs, one_pass, spec)}
    print(json.dumps(results))


if __name__ == "__main__":
    main(int(sys.argv[1]))

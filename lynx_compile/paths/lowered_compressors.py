"""The CUTLASS paths' compressors as a lowered graph holds them: the one-pass kernel's launch itself, for Inductor.

Without CUDA graphs a sparse layer pays its ops' host time on every call, and the compressor op was the larger
part of what lynx adds over a dense layer (≈ 4 of ≈ 8 cuBLAS calls' worth: the op's dispatch, the fold's decoding,
the checks, three allocations, Triton's own launch path; benchmarks/RESULTS.md, sessions 10 and 13). Where the
one-pass kernel provably reads X as the traced graph gives it (16-bit, contiguous along K, aligned: `applies` with
`traced`), `SparsePath.lower` traces this instead of the op: the output buffers' allocations and the kernel's launch
through `torch.library.wrap_triton` (`kernels/launcher.py`). Inductor then compiles the kernel as a user-defined
Triton kernel and launches it from its generated code, as it does its own, with none of lynx's Python around it.
Elsewhere (a fold only the general kernel reads, a layout the graph cannot prove) the op stays, as in `forward`.
Inductor's analysis of a launch's Triton IR finds it writing its outputs alone, x only read
(`tests/test_lowered_compressors.py`; `kernels/group_words.chunk_pairs` says what had made x look written), so a
launch may read the graph's own input without costing the graph its CUDA graphs.

The speed rule times a layer without CUDA graphs with its host time, which the op's Python had made as long as the
kernel's GPU time at FLUX's sizes; `as_lowered_cutlass` and `as_lowered_fp8` give it the compressor with about the
host cost the lowered graph pays: the launch planned once and captured in a CUDA graph whose replay stands for
Inductor's launch (Triton's own launch path with the kernel's 19 arguments costs 1.5–2.5 cuBLAS calls' host time,
`bench_host.py`, Inductor's a fraction of that); with CUDA graphs, the planned launch and the allocations per call.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..folds import FoldSpec, loading
from ..kernels import prune_compress_24_single_pass as one_pass_16bit
from ..kernels import quantize_fp8_single_pass as one_pass_fp8
from ..kernels.e4m3 import FP8_DTYPE, hardware_cast
from ..kernels.launcher import Launch
from ..kernels.prune_compress_24 import check_compressible_width, cutlass_operand
from ..kernels.prune_quantize_fp8 import check_fp8_width


def compress_cutlass(inputs: Sequence[torch.Tensor], spec: FoldSpec) -> tuple[torch.Tensor, ...]:
    """What `lynx::prune_compress_24_cutlass` returns (values, metadata, the rows' norm scale), traced."""
    operands, loader = loading(inputs, spec)
    if not one_pass_16bit.applies(operands, loader, traced=True):
        return torch.ops.lynx.prune_compress_24_cutlass.default(list(inputs), spec.encode())
    check_compressible_width(operands[0].dtype, loader.width)
    values, metadata = cutlass_operand(operands[0].shape[0], loader.width, operands[0].dtype, operands[0].device)
    return values, metadata, one_pass_16bit.launch(operands, loader, values, metadata, traced=True)


def compress_fp8(inputs: Sequence[torch.Tensor], spec: FoldSpec, norm_compensation: bool) -> tuple[torch.Tensor, ...]:
    """What `lynx::prune_quantize_compress_fp8` returns (e4m3 values, metadata, the row scale), traced."""
    operands, loader = loading(inputs, spec)
    if not one_pass_fp8.applies(operands, loader, traced=True):
        return torch.ops.lynx.prune_quantize_compress_fp8.default(list(inputs), spec.encode(), norm_compensation)
    check_fp8_width(loader.width)
    values, metadata = cutlass_operand(operands[0].shape[0], loader.width, FP8_DTYPE, operands[0].device)
    scale = one_pass_fp8.launch(operands, loader, values, metadata, True, norm_compensation, hardware_cast(),
                                traced=True)  # fmt: skip
    return values, metadata, scale


def as_lowered_cutlass(inputs: Sequence[torch.Tensor], spec: FoldSpec,
                       replayed: bool = False) -> Callable[[], tuple[torch.Tensor, ...]]:  # fmt: skip
    """`compress_cutlass` as the speed rule runs it, on these inputs: the op where the one-pass kernel cannot read
    them, else its planned launch (`replayed`: from a CUDA graph, for timing without CUDA graphs)."""
    operands, loader = loading(inputs, spec)
    if not one_pass_16bit.applies(operands, loader):
        return lambda: torch.ops.lynx.prune_compress_24_cutlass.default(list(inputs), spec.encode())
    launch = one_pass_16bit.planned(operands, loader)
    return _launching(launch, operands[0], loader.width, operands[0].dtype, replayed)


def as_lowered_fp8(inputs: Sequence[torch.Tensor], spec: FoldSpec, norm_compensation: bool = True,
                   replayed: bool = False) -> Callable[[], tuple[torch.Tensor, ...]]:  # fmt: skip
    """`compress_fp8` as the speed rule runs it, on these inputs: the op where the one-pass kernel cannot read
    them, else its planned launch (`replayed`: from a CUDA graph, for timing without CUDA graphs)."""
    operands, loader = loading(inputs, spec)
    if not one_pass_fp8.applies(operands, loader):
        return lambda: torch.ops.lynx.prune_quantize_compress_fp8.default(list(inputs), spec.encode(),
                                                                          norm_compensation)  # fmt: skip
    check_fp8_width(loader.width)
    launch = one_pass_fp8.planned(operands, loader, True, norm_compensation, hardware_cast())
    return _launching(launch, operands[0], loader.width, FP8_DTYPE, replayed)


def _launching(launch: Launch, head: torch.Tensor, k: int, dtype: torch.dtype,
               replayed: bool) -> Callable[[], tuple[torch.Tensor, ...]]:  # fmt: skip
    """A call that allocates the outputs, as Inductor's code does, and launches `launch` into them; `replayed`
    (a CUDA device only), a call that replays that launch captured once into fixed outputs."""

    def compress() -> tuple[torch.Tensor, ...]:
        values, metadata = cutlass_operand(head.shape[0], k, dtype, head.device)
        scale = torch.empty(head.shape[0], dtype=torch.float32, device=head.device)
        launch.run(values_ptr=values, meta_ptr=metadata, scale_ptr=scale)
        return values, metadata, scale

    if not replayed:
        return compress
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.device(head.device):  # captured on the inputs' device, whichever is current
        compress()  # compiled before the capture, which must not compile
        with torch.cuda.graph(graph):
            outputs = compress()

    def replay() -> tuple[torch.Tensor, ...]:
        graph.replay()
        return outputs

    return replay


__all__ = ["as_lowered_cutlass", "as_lowered_fp8", "compress_cutlass", "compress_fp8"]

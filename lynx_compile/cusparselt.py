"""The sparse-tensor-core path: when it exists, and whether it is faster than dense for a shape, measured.

A linear runs on sparse tensor cores as: `lynx::prune_compress_24` (prune, write cuSPARSELt's operand and the rows'
norm scale) → `torch._cslt_sparse_mm` with the algorithm cuSPARSELt's search picks for the shape → norm scale and bias
(fused by Inductor into whatever consumes the output). That needs an sm_90 GPU (the only compressed layout we write),
bf16/fp16, 2:4 with norm compensation, K % 64 == 0 and N, M % 16 == 0.

Whether it pays depends on the shape and on CUDA graphs: cuSPARSELt's GEMM alone is 1.0–1.6× faster than cuBLAS
(benchmarks/RESULTS.md), and torch 2.11 rebuilds its plan on every `_cslt_sparse_mm` call (0.5–0.9 ms of host time)
unless the call is replayed from a CUDA graph. So the decision is measured, once per GPU, shape and graph mode, on
random data at compile time, and cached for the process.
"""

from __future__ import annotations

import functools
import logging
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .kernels.prune_compress_24 import COMPRESSED_DTYPES, K_MULTIPLE, layout_supported
from .timing import cuda_graph_ms, host_included_ms

logger = logging.getLogger(__name__)

CSLT_MULTIPLE = 16  # cuSPARSELt wants M, N (and K) multiples of 16 for 16-bit operands


def unavailable_reason(device: torch.device, dtype: torch.dtype, k: int, n: int, config) -> str | None:
    """Why a linear cannot run on the sparse path here; None when it can."""
    if device.type != "cuda" or not layout_supported(device):
        return f"no sparse-tensor-core kernel for {device.type} (compressed layout known for sm_90 only)"
    if (config.n, config.m) != (2, 4):
        return f"{config.n}:{config.m} has no tensor-core path (2:4 only)"
    if not config.norm_compensation:
        return "the fused kernel always applies norm compensation"
    if dtype not in COMPRESSED_DTYPES:
        return f"dtype {str(dtype).removeprefix('torch.')}: sparse tensor cores take bf16/fp16"
    if k % K_MULTIPLE:
        return f"K={k} not a multiple of {K_MULTIPLE}"
    if n % CSLT_MULTIPLE:
        return f"N={n} not a multiple of {CSLT_MULTIPLE}"
    return None


def search_algorithm(operand: torch.Tensor, weight_t: torch.Tensor) -> int:
    """cuSPARSELt's own pick among its algorithms (10–35% over the default on FLUX shapes)."""
    with warnings.catch_warnings():  # deprecated in torch 2.11 in favour of a private API that 2.11 lacks
        warnings.simplefilter("ignore")
        return int(torch._cslt_sparse_mm_search(operand, weight_t))


@dataclass(frozen=True)
class Measurement:
    dense_ms: float
    sparse_ms: float
    algorithm: int

    @property
    def speedup(self) -> float:
        return self.dense_ms / self.sparse_ms


@functools.cache
def measure(
    tokens: int, k: int, n: int, dtype: torch.dtype, device_index: int, cuda_graphs: bool, lora_rank: int = 0,
    pieces: tuple[tuple[int, str], ...] | None = None,
) -> Measurement:
    """Dense `F.linear` vs the sparse path on random data, the epilogue left out on both sides: Inductor fuses bias
    and norm scale into the consumer either way.
    With `lora_rank`, the sparse path includes a correction of that rank (its add unfused: slightly pessimistic).

    `pieces` ((width, activation), ...) describe an input folded into the sparse op (`passes/fold_producers.py`):
    dense then pays for writing x = cat(act(piece)) and the sparse path prunes the pieces as it loads them.
    """
    from .ops import assemble, cusparselt_gemm

    device = torch.device("cuda", device_index)
    with torch.no_grad(), torch._subclasses.fake_tensor.unset_fake_temporarily():
        generator = torch.Generator(device=device).manual_seed(0)
        widths, names = zip(*pieces) if pieces else ((k,), ("none",))
        inputs = [torch.randn(tokens, width, device=device, dtype=dtype, generator=generator) for width in widths]
        activations = ",".join(names)
        weight = torch.randn(n, k, device=device, dtype=dtype, generator=generator) / k**0.5
        compress = torch.ops.lynx.prune_compress_24
        operand, _ = compress(inputs, activations)
        algorithm = search_algorithm(operand, weight.t())
        lora = None
        if lora_rank:
            lora = (torch.randn(n, lora_rank, device=device, dtype=dtype, generator=generator) / n**0.5,
                    torch.randn(lora_rank, k, device=device, dtype=dtype, generator=generator) / k**0.5)  # fmt: skip
        timer = (lambda fn: cuda_graph_ms(fn, rep_ms=20)) if cuda_graphs else host_included_ms

        def sparse():
            out, scale = cusparselt_gemm(inputs, activations, weight, algorithm, compress)
            if lora is not None:  # the correction's two small GEMMs on the dense x
                lora_a, lora_b = lora
                out = out + torch.mm(torch.mm(assemble(inputs, activations), lora_b.t()), lora_a.t())
            return out, scale

        dense_ms = timer(lambda: F.linear(assemble(inputs, activations), weight))
        sparse_ms = timer(sparse)
    result = Measurement(dense_ms, sparse_ms, algorithm)
    logger.info("lynx: %d×%d→%d %s (%s, LoRA rank %d, input %s): dense %.4f ms, sparse %.4f ms, %.2f×", tokens, k,
                n, dtype, "CUDA graphs" if cuda_graphs else "no CUDA graphs", lora_rank, activations, dense_ms,
                sparse_ms, result.speedup)  # fmt: skip
    return result

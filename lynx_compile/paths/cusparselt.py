"""The cuSPARSELt path: `lynx::prune_compress_24` (prune x as it is loaded, applying the folded producer; write
cuSPARSELt's sm_90 operand and the rows' norm scale) → `torch._cslt_sparse_mm` with the algorithm cuSPARSELt's
search picks for the shape → norm scale, bias and correction, fused by Inductor into whatever consumes the output.

It needs an sm_90 GPU (the only compressed layout we write), bf16/fp16, 2:4, K % 64 == 0 and N % 16 == 0. Any token
count M runs: cuSPARSELt wants M % 16 == 0 too, so the compressor pads the operand with zero rows to the next
multiple of 16 and the layer's output is the first M rows of the GEMM's, a view (no copy of Y).

Sibling linears that read one x (q, k and v; FLUX's single-block q, k, v and MLP-in) run as a group: one prune and
compress of x for all of them, then each member's own GEMM against its own weight, each with the algorithm searched
for it. With the option ``pack_siblings`` (not yet run on a GPU) the group runs one GEMM over the members' weights
as one (ΣN, K) matrix instead, each member's output its columns of the result; the weights are not copied for it:
compiling re-points the members' parameters as row blocks of one buffer (`lynx_compile.packing`), and a call whose
weights no longer form that matrix concatenates them (`lynx::cslt_rows_mm`).

Whether it pays depends on the shape and on CUDA graphs: cuSPARSELt's GEMM alone is 1.0–1.6× faster than cuBLAS
(benchmarks/RESULTS.md), and torch 2.11 rebuilds its plan on every `_cslt_sparse_mm` call (0.5–0.9 ms of host time)
unless the call is replayed from a CUDA graph. So it is measured (`paths/measurements.py`).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Callable, Sequence

import torch

from ..folds import FoldSpec, assemble
from ..kernel_op import kernel_op
from ..kernels.prune_compress_24 import layout_supported
from ..method import Lora, Method, epilogue
from ..packing import adjacent_rows
from ..plan import SparseLinearPlan
from .base import SparsePath, Timer, Workload, tensor_core_reason

logger = logging.getLogger(__name__)

CSLT_MULTIPLE = 16  # cuSPARSELt wants M, N (and K) multiples of 16 for 16-bit operands; M is padded to it


def search_algorithm(operand: torch.Tensor, weight_t: torch.Tensor) -> int:
    """cuSPARSELt's own pick among its algorithms (10–35% over the default on FLUX shapes)."""
    with warnings.catch_warnings():  # deprecated in torch 2.11 in favour of a private API that 2.11 lacks
        warnings.simplefilter("ignore")
        return int(torch._cslt_sparse_mm_search(operand, weight_t))


def torch_sparse_mm(operand: torch.Tensor, weight: torch.Tensor, algorithm: int) -> torch.Tensor:
    """x̃·Wᵀ through torch's op, which builds cuSPARSELt's plan anew on every call."""
    return torch._cslt_sparse_mm(operand, weight.t(), alg_id=algorithm)


SparseMm = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
SPARSE_MMS: dict[str, SparseMm] = {}  # each path of this family's GEMM by its name (for `lynx::cslt_rows_mm`)
_UNPACKED_WARNED: set[tuple[int, ...]] = set()


@kernel_op("lynx::cslt_rows_mm")
def cslt_rows_mm(operand: torch.Tensor, weights: list[torch.Tensor], algorithm: int, path: str) -> torch.Tensor:
    """x̃·[W₁; W₂; …]ᵀ (operand rows × ΣNᵢ) in one GEMM of `path`: over the weights' own buffer where they are its
    consecutive rows (`packing.adjacent_rows`: checked on every call, as only real tensors can say), else over a
    concatenated copy made for this call."""
    packed = adjacent_rows(weights)
    if packed is None:
        shapes = tuple(weight.shape[0] for weight in weights)
        if shapes not in _UNPACKED_WARNED:
            _UNPACKED_WARNED.add(shapes)
            logger.warning("lynx: a sibling group's weights (N=%s) are not packed in one buffer (a weight replaced "
                           "after compiling, or cast by autocast): concatenating them on every call",
                           "+".join(map(str, shapes)))  # fmt: skip
        packed = torch.cat(weights)
    return SPARSE_MMS[path](operand, packed, algorithm)


@torch.library.register_fake("lynx::cslt_rows_mm")
def _(operand: torch.Tensor, weights: list[torch.Tensor], algorithm: int, path: str) -> torch.Tensor:
    return weights[0].new_empty(operand.shape[0], sum(weight.shape[0] for weight in weights))


def cusparselt_gemms(
    inputs: Sequence[torch.Tensor], fold: FoldSpec, weights: Sequence[torch.Tensor], algorithms: Sequence[int],
    sparse_mm: SparseMm = torch_sparse_mm,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """([x̃·Wᵢᵀ as rows × Nᵢ for each weight], the rows' norm scale s): layers reading one x before their epilogues,
    x pruned and compressed once."""
    operand, scale = torch.ops.lynx.prune_compress_24.default(list(inputs), fold.encode(), CSLT_MULTIPLE)
    rows = scale.shape[0]  # the padding rows' products are zeros, and no one's
    return [sparse_mm(operand, weight, algorithm)[:rows] for weight, algorithm in zip(weights, algorithms)], scale


def cusparselt_gemm(
    inputs: Sequence[torch.Tensor], fold: FoldSpec, weight: torch.Tensor, algorithm: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̃·Wᵀ as rows × N, the rows' norm scale s): the sparse layer before its epilogue."""
    (out,), scale = cusparselt_gemms(inputs, fold, [weight], [algorithm])
    return out, scale


class Cusparselt(SparsePath):
    name = "cusparselt"
    groups = True

    def __init__(self) -> None:
        SPARSE_MMS[self.name] = self.sparse_mm

    def sparse_mm(self, operand: torch.Tensor, weight: torch.Tensor, algorithm: int) -> torch.Tensor:
        """The GEMM on the compressed operand (a subclass may run it another way: `cusparselt_planned`)."""
        return torch_sparse_mm(operand, weight, algorithm)

    def runs_on(self, device: torch.device) -> bool:
        return device.type == "cuda" and layout_supported(device)

    def unavailable_reason(self, workload: Workload, method: Method) -> str | None:
        if not self.runs_on(workload.device):
            return f"no sparse-tensor-core kernel for {workload.device.type} (compressed layout known for sm_90 only)"
        return tensor_core_reason(workload, method, CSLT_MULTIPLE)

    def tune(self, workload: Workload, timer: Timer) -> tuple[dict[str, Any], float]:
        """A group is timed as it runs: one compress, then one GEMM per member, or (`workload.packed`) one GEMM over
        the members' weights as one matrix (the example weight is that matrix); each GEMM with the algorithm
        cuSPARSELt's search picks for its shape."""
        inputs, weight, lora = workload.example()
        weights = [weight] if workload.packed or not workload.out_splits else weight.split(workload.members)
        operand, _ = torch.ops.lynx.prune_compress_24(inputs, workload.fold.encode(), CSLT_MULTIPLE)
        algorithms = [search_algorithm(operand, member.t()) for member in weights]

        def sparse() -> object:
            outs, scale = cusparselt_gemms(inputs, workload.fold, weights, algorithms, self.sparse_mm)
            if lora is not None:  # the correction's two small GEMMs on the dense x (its add unfused: pessimistic)
                outs = [epilogue(outs[0], None, None, lora, assemble(inputs, workload.fold))]
            return outs, scale

        if workload.out_splits and not workload.packed:
            return {"members": [{"algorithm": algorithm} for algorithm in algorithms]}, timer(sparse)
        return {"algorithm": algorithms[0], **({"packed": True} if workload.packed else {})}, timer(sparse)

    def unfused_epilogue_ms(self, workload: Workload, timer: Timer) -> float:
        """The scale applied to each member's output as one pass (a read and a write of Y, as Inductor's kernel
        for it does where it cannot fuse it into the consumer), alone."""
        generator = torch.Generator(device=workload.device).manual_seed(1)
        outs = [torch.randn(workload.tokens, n, device=workload.device, dtype=workload.dtype, generator=generator)
                for n in workload.members]  # fmt: skip
        scale = torch.ones(workload.tokens, 1, device=workload.device)  # in place, replay after replay: keep Y as it is
        return timer(lambda: [out.mul_(scale) for out in outs])

    def forward(self, inputs: Sequence[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor | None, lora: Lora,
                plan: SparseLinearPlan) -> torch.Tensor:  # fmt: skip
        """The scale and the rest of the epilogue are plain torch: Inductor fuses them into one pointwise pass, or
        into the consumer's."""
        (out,), scale = cusparselt_gemms(inputs, plan.fold, [weight], [plan.param("algorithm", 0)], self.sparse_mm)
        rows = None
        if lora is not None:  # the dense x, only where the correction reads it
            rows = assemble(inputs, plan.fold).reshape(-1, weight.shape[1])
        return self._epilogue(out, scale, bias, lora, rows, inputs, plan)

    def forward_group(self, inputs: Sequence[torch.Tensor], weights: Sequence[torch.Tensor],
                      biases: Sequence[torch.Tensor | None], plan: SparseLinearPlan) -> list[torch.Tensor]:  # fmt: skip
        if not plan.param("packed"):
            algorithms = [member["algorithm"] for member in plan.param("members")]
            outs, scale = cusparselt_gemms(inputs, plan.fold, weights, algorithms, self.sparse_mm)
        else:
            operand, scale = torch.ops.lynx.prune_compress_24.default(list(inputs), plan.fold.encode(), CSLT_MULTIPLE)
            out = torch.ops.lynx.cslt_rows_mm(operand, list(weights), plan.param("algorithm", 0), self.name)
            outs = out[: scale.shape[0]].split([weight.shape[0] for weight in weights], dim=1)
        return [self._epilogue(out, scale, bias, None, None, inputs, plan) for out, bias in zip(outs, biases)]

    @staticmethod
    def _epilogue(out: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, lora: Lora,
                  rows: torch.Tensor | None, inputs: Sequence[torch.Tensor], plan: SparseLinearPlan) -> torch.Tensor:
        scale = scale if plan.method.norm_compensation else None
        return epilogue(out, scale, bias, lora, rows).reshape(*inputs[0].shape[:-1], out.shape[-1])

    def describe(self, params: dict[str, Any]) -> str:
        algorithms = ", ".join(str(member["algorithm"]) for member in params.get("members", [params]))
        packed = ", one GEMM over the group's packed weights" if params.get("packed") else ""
        return f"2:4 sparse tensor cores (cuSPARSELt, alg {algorithms}{packed})"

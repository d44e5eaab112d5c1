"""The CUTLASS FP8 path, for torchao float8 layers: `folds.compress_fp8` (prune x as it is loaded, quantize each
pruned row to e4m3 with its own scale, write CUTLASS's 8-bit operand layout and the row scale) → lynx's sm_90a FP8
sparse GEMM (`kernels/cutlass_gemm.py`, e4m3 in, fp32 accumulate, bf16 out) against torchao's e4m3 weight as it is
stored, whose epilogue applies the row scale (quantization × norm), the weight's per-feature scale and the bias.

The speed rule times it against rowwise FP8 dense (`float8.dense_float8_linear`: the activation's quantization and
`torch._scaled_mm` with fast accumulation, what torchao's float8 linear runs), each FP8 configuration, raster order
and swizzle, and keeps the fastest. Sibling groups (q, k, v; FLUX's single-block q, k, v and MLP-in) run one
compress for all members, then each member's GEMM on its own weight with its own configuration, timed against x
quantized once for the members' dense FP8 GEMMs. A layer with a folded producer is also timed with the producer
written out first (`Workload.written`), which the speed rule takes where applying it on load costs more.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..float8 import Float8Weight, quantize_weight
from ..folds import IDENTITY, load
from ..kernels import cutlass_gemm
from ..kernels.cutlass_gemm import FP8_CONFIGS, RASTERS
from ..kernels.prune_quantize_fp8 import FP8_K_MULTIPLE
from ..method import Lora, Method
from ..plan import SparseLinearPlan
from . import lowered_compressors, lowered_gemm
from .base import SparsePath, Timer, Workload, tensor_core_reason
from .cutlass import N_MULTIPLE, built_configs, fastest_setting, member_outputs

FP8 = torch.float8_e4m3fn


class CutlassFloat8(SparsePath):
    name = "cutlass_float8"
    float8 = True
    groups = True
    times_written = True
    lowers_float8 = True

    def runs_on(self, device: torch.device) -> bool:
        return device.type == "cuda" and cutlass_gemm.unavailable_reason(device) is None

    def unavailable_reason(self, workload: Workload, method: Method) -> str | None:
        if workload.device.type != "cuda":
            return f"no FP8 sparse-tensor-core kernel for {workload.device.type}"
        why = cutlass_gemm.unavailable_reason(workload.device) or tensor_core_reason(workload, method, N_MULTIPLE)
        if why is not None:
            return why
        if workload.dtype != torch.bfloat16:
            return f"activation dtype {str(workload.dtype).removeprefix('torch.')}: the FP8 kernel writes bf16"
        if workload.in_features % FP8_K_MULTIPLE:
            return f"K={workload.in_features} not a multiple of {FP8_K_MULTIPLE} (the FP8 kernel's tile K)"
        return None

    def tune(self, workload: Workload, timer: Timer) -> tuple[dict[str, Any], float]:
        """Each configuration, raster order and swizzle, per member of a group; the fastest of each, timed together
        as the layer (or group) runs: one compress, then each member's GEMM."""
        inputs, weight, _ = workload.example()
        weights = [quantize_weight(member) for member in weight.split(workload.members)]
        configs = built_configs(FP8_CONFIGS, FP8)
        # the compressor with the lowered graph's host cost; written: x made by its producer's own kernel (as
        # Inductor's would) into a buffer of its own each call, and the compressor, planned on one such x, reading it
        written = [load(inputs, workload.fold)] if workload.written else None
        compress = lowered_compressors.as_lowered_fp8(written or inputs, IDENTITY if written else workload.fold,
                                                      replayed=not workload.cuda_graphs)  # fmt: skip
        values, metadata, scale = compress()
        settings = [fastest_setting(lambda setting, member=member: _gemm(values, metadata, member, scale, None,
                                                                         setting, lowered=True), configs, timer)
                    for member in weights]  # fmt: skip

        def sparse() -> object:
            if written:
                load(inputs, workload.fold)
            values, metadata, scale = compress()
            return [_gemm(values, metadata, member, scale, None, setting, lowered=True)
                    for member, setting in zip(weights, settings)]  # fmt: skip

        return ({"members": settings} if workload.out_splits else settings[0]), timer(sparse)

    def forward(self, inputs: Sequence[torch.Tensor], weight: Float8Weight, bias: torch.Tensor | None, lora: Lora,
                plan: SparseLinearPlan) -> torch.Tensor:  # fmt: skip
        return self.forward_group(inputs, [weight], [bias], plan)[0]

    def lower(self, inputs: Sequence[torch.Tensor], weight: Float8Weight, bias: torch.Tensor | None, lora: Lora,
              plan: SparseLinearPlan) -> torch.Tensor:  # fmt: skip
        return self.lower_group(inputs, [weight], [bias], plan)[0]

    def forward_group(self, inputs: Sequence[torch.Tensor], weights: Sequence[Float8Weight],
                      biases: Sequence[torch.Tensor | None], plan: SparseLinearPlan) -> list[torch.Tensor]:  # fmt: skip
        compressed = torch.ops.lynx.prune_quantize_compress_fp8(list(inputs), plan.fold.encode(),
                                                                plan.method.norm_compensation)  # fmt: skip
        return member_outputs(compressed, inputs, weights, biases, plan, _gemm, _fusable_bias)

    def lower_group(self, inputs: Sequence[torch.Tensor], weights: Sequence[Float8Weight],
                    biases: Sequence[torch.Tensor | None], plan: SparseLinearPlan) -> list[torch.Tensor]:  # fmt: skip
        compressed = lowered_compressors.compress_fp8(inputs, plan.fold, plan.method.norm_compensation)
        return member_outputs(compressed, inputs, weights, biases, plan, _gemm, _fusable_bias)

    def describe(self, params: dict[str, Any]) -> str:
        settings = ", ".join(f"{member['config']} {member['raster']} swizzle {member['swizzle']}"
                             for member in params.get("members", [params]))  # fmt: skip
        return f"2:4 sparse FP8 tensor cores (CUTLASS, {settings}, both scales and bias in the epilogue)"

    def source_files(self) -> tuple[str, ...]:
        return (*super().source_files(), cutlass_gemm.__file__, lowered_compressors.__file__, lowered_gemm.__file__)


def _fusable_bias(bias: torch.Tensor | None, weight: Float8Weight) -> bool:
    """Whether the FP8 kernel's epilogue can add the bias (bf16, Y's dtype, contiguous); else it is added after."""
    return bias is not None and bias.dtype == torch.bfloat16 and bias.is_contiguous()


def _gemm(values: torch.Tensor, metadata: torch.Tensor, weight: Float8Weight, scale: torch.Tensor,
          bias: torch.Tensor | None, setting: dict[str, Any], lowered: bool = False) -> torch.Tensor:  # fmt: skip
    """The op a graph holds; `lowered`: called as Inductor's code calls it, for the speed rule (`lowered_gemm`)."""
    gemm = lowered_gemm.as_lowered if lowered else torch.ops.lynx.cutlass_sparse_mm
    return gemm(values, metadata, weight.qdata, scale, bias, setting["config"], RASTERS[setting["raster"]],
                setting["swizzle"], weight_scale=weight.scale)  # fmt: skip

"""The CUTLASS path: `lynx::prune_compress_24_cutlass` (prune x as it is loaded, applying the folded producer; write
the operand in CUTLASS's layout and the rows' norm scale) → lynx's own sm_90a sparse GEMM
(`kernels/cutlass_gemm.py`), whose epilogue applies the norm scale and the bias, so Y is written once; a LoRA
correction is added after it.

Unlike cuSPARSELt it takes any token count M (no padding: TMA clips the tile) and N % 8 == 0, and it has no per-call
plan: a call is one launch through a C entry point. It runs where the kernels can be built and run
(`cutlass_gemm.unavailable_reason`: nvcc, the `nvidia-cutlass` headers, an sm_90 GPU); the first layer measured
builds the configurations (minutes, once per machine, cached on disk). Per layer the speed rule times each
configuration (`cutlass_gemm.CONFIGS`), raster order and swizzle and keeps the fastest, beside the other paths.
Sibling groups run one compress for all members, then each member's GEMM with its own configuration.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional, Sequence

import torch

from ..folds import FoldSpec, assemble
from ..kernel_op import kernel_op
from ..kernels import cutlass_gemm
from ..kernels.cutlass_gemm import CONFIGS, RASTERS, SWIZZLES, GemmConfig
from ..method import Lora, Method, epilogue
from ..plan import SparseLinearPlan
from . import lowered_compressors, lowered_gemm
from .base import SparsePath, Timer, Workload, tensor_core_reason

logger = logging.getLogger(__name__)

N_MULTIPLE = 8  # 16-byte rows of Y and of the bias for TMA


@kernel_op("lynx::cutlass_sparse_mm")
def cutlass_sparse_mm(values: torch.Tensor, metadata: torch.Tensor, weight: torch.Tensor,
                      scale: Optional[torch.Tensor], bias: Optional[torch.Tensor], config: str, raster: int,
                      swizzle: int, weight_scale: Optional[torch.Tensor] = None) -> torch.Tensor:  # fmt: skip
    """s ⊙ (X̃·Wᵀ) ⊙ w + b (rows × N) for X̃ as the CUTLASS-layout compressors write it: 16-bit (with W of its dtype,
    no w), or e4m3 (`lynx::prune_quantize_compress_fp8`, with torchao's e4m3 W read in place and its per-feature
    scale w; bf16 out)."""
    if weight_scale is None:  # a 16-bit weight may be a view; torchao's e4m3 one is never copied (an error if strided)
        weight = weight.contiguous()
    return cutlass_gemm.sparse_mm(values, metadata, weight, scale, bias, GemmConfig.parse(config), raster, swizzle,
                                  weight_scale=weight_scale)  # fmt: skip


@torch.library.register_fake("lynx::cutlass_sparse_mm")
def _(values, metadata, weight, scale, bias, config, raster, swizzle, weight_scale=None):
    return values.new_empty((values.shape[0], weight.shape[0]), dtype=cutlass_gemm.output_dtype(weight.dtype))


def _fusable_bias(bias: torch.Tensor | None, weight: torch.Tensor) -> bool:
    """Whether the kernel's epilogue can add the bias (W's dtype, contiguous); else it is added after."""
    return bias is not None and bias.dtype == weight.dtype and bias.dim() == 1 and bias.is_contiguous()


class Cutlass(SparsePath):
    name = "cutlass"
    groups = True

    def runs_on(self, device: torch.device) -> bool:
        return device.type == "cuda" and cutlass_gemm.unavailable_reason(device) is None

    def unavailable_reason(self, workload: Workload, method: Method) -> str | None:
        if workload.device.type != "cuda":
            return f"no sparse-tensor-core kernel for {workload.device.type} (compressed layout known for sm_90 only)"
        why = cutlass_gemm.unavailable_reason(workload.device)
        return why or tensor_core_reason(workload, method, N_MULTIPLE)

    def tune(self, workload: Workload, timer: Timer) -> tuple[dict[str, Any], float]:
        """Each configuration, raster order and swizzle, per member of a group; the fastest of each, timed together
        as the group runs (one compress, then each member's GEMM). A packed group is timed member by member: this
        path has no one-GEMM mode yet."""
        inputs, weight, lora = workload.example()
        weights = weight.split(workload.members) if workload.out_splits else [weight]
        configs = built_configs(CONFIGS, workload.dtype)
        # the compressor with about the lowered graph's host cost (`lowered_compressors`)
        compress = lowered_compressors.as_lowered_cutlass(inputs, workload.fold, replayed=not workload.cuda_graphs)
        values, metadata, scale = compress()
        settings = [fastest_setting(lambda setting, member=member: _gemm(values, metadata, member, scale, None,
                                                                         setting, lowered=True), configs, timer)
                    for member in weights]  # fmt: skip

        def sparse() -> object:
            values, metadata, scale = compress()
            outs = [_gemm(values, metadata, member, scale, None, setting, lowered=True)
                    for member, setting in zip(weights, settings)]  # fmt: skip
            if lora is not None:  # the correction's two small GEMMs on the dense x (its add unfused: pessimistic)
                outs = [epilogue(outs[0], None, None, lora, assemble(inputs, workload.fold))]
            return outs

        ms = timer(sparse)
        return ({"members": settings} if workload.out_splits else settings[0]), ms

    def forward(self, inputs: Sequence[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor | None, lora: Lora,
                plan: SparseLinearPlan) -> torch.Tensor:  # fmt: skip
        return self._layer(inputs, weight, bias, lora, plan, _compress_op)

    def lower(self, inputs: Sequence[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor | None, lora: Lora,
              plan: SparseLinearPlan) -> torch.Tensor:  # fmt: skip
        return self._layer(inputs, weight, bias, lora, plan, lowered_compressors.compress_cutlass)

    def forward_group(self, inputs: Sequence[torch.Tensor], weights: Sequence[torch.Tensor],
                      biases: Sequence[torch.Tensor | None], plan: SparseLinearPlan) -> list[torch.Tensor]:  # fmt: skip
        return self._group(inputs, weights, biases, plan, _compress_op)

    def lower_group(self, inputs: Sequence[torch.Tensor], weights: Sequence[torch.Tensor],
                    biases: Sequence[torch.Tensor | None], plan: SparseLinearPlan) -> list[torch.Tensor]:  # fmt: skip
        return self._group(inputs, weights, biases, plan, lowered_compressors.compress_cutlass)

    def _layer(self, inputs: Sequence[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor | None, lora: Lora,
               plan: SparseLinearPlan, compress: Compressor) -> torch.Tensor:  # fmt: skip
        values, metadata, scale = compress(inputs, plan.fold)
        scale = scale if plan.method.norm_compensation else None
        fused = _fusable_bias(bias, weight)
        out = _gemm(values, metadata, weight, scale, bias if fused else None, dict(plan.params))
        rows = assemble(inputs, plan.fold).reshape(-1, weight.shape[1]) if lora is not None else None
        out = epilogue(out, None, None if fused else bias, lora, rows)
        return out.reshape(*inputs[0].shape[:-1], weight.shape[0])

    def _group(self, inputs: Sequence[torch.Tensor], weights: Sequence[torch.Tensor],
               biases: Sequence[torch.Tensor | None], plan: SparseLinearPlan,
               compress: Compressor) -> list[torch.Tensor]:  # fmt: skip
        values, metadata, scale = compress(inputs, plan.fold)
        scale = scale if plan.method.norm_compensation else None
        return member_outputs((values, metadata, scale), inputs, weights, biases, plan, _gemm, _fusable_bias)

    def describe(self, params: dict[str, Any]) -> str:
        settings = ", ".join(f"{member['config']} {member['raster']} swizzle {member.get('swizzle', 1)}"
                             for member in params.get("members", [params]))  # fmt: skip
        return f"2:4 sparse tensor cores (CUTLASS, {settings}, scale and bias in the epilogue)"

    def source_files(self) -> tuple[str, ...]:
        # the kernel's source keys its own build (`cutlass_gemm.library_path`), not the graphs that call it; the
        # lowered compressors decide what `lower` traces
        return (*super().source_files(), cutlass_gemm.__file__, lowered_compressors.__file__, lowered_gemm.__file__)


# The compressor a body calls: the op (`forward`), or what a lowered graph holds (`lower`: `lowered_compressors`)
Compressor = Callable[[Sequence[torch.Tensor], FoldSpec], tuple[torch.Tensor, ...]]


def _compress_op(inputs: Sequence[torch.Tensor], spec: FoldSpec) -> tuple[torch.Tensor, ...]:
    return torch.ops.lynx.prune_compress_24_cutlass.default(list(inputs), spec.encode())


def _gemm(values: torch.Tensor, metadata: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None,
          bias: torch.Tensor | None, setting: dict[str, Any], lowered: bool = False) -> torch.Tensor:  # fmt: skip
    """The op a graph holds; `lowered`: called as Inductor's code calls it, for the speed rule (`lowered_gemm`)."""
    gemm = lowered_gemm.as_lowered if lowered else torch.ops.lynx.cutlass_sparse_mm
    return gemm(values, metadata, weight, scale, bias, setting["config"], RASTERS[setting["raster"]],
                setting.get("swizzle", 1))  # fmt: skip


def member_outputs(compressed: tuple[torch.Tensor, ...], inputs: Sequence[torch.Tensor], weights: Sequence[Any],
                   biases: Sequence[torch.Tensor | None], plan: SparseLinearPlan, gemm: Callable[..., torch.Tensor],
                   fusable: Callable[[torch.Tensor | None, Any], bool]) -> list[torch.Tensor]:  # fmt: skip
    """Each member's y (shaped as x) from the one compressed x (values, metadata, row scale), for both CUTLASS
    paths: `gemm` with the member's setting, its bias in the epilogue where `fusable(bias, weight)`, else after."""
    values, metadata, scale = compressed
    outs = []
    for index, (weight, bias) in enumerate(zip(weights, biases)):
        fused = fusable(bias, weight)
        out = gemm(values, metadata, weight, scale, bias if fused else None, dict(plan.member(index).params))
        out = out if fused or bias is None else out + bias
        outs.append(out.reshape(*inputs[0].shape[:-1], out.shape[-1]))
    return outs


def built_configs(configs: Sequence[GemmConfig], dtype: torch.dtype) -> list[GemmConfig]:
    """The configurations that build (on first use, side by side: minutes, once per machine); an error if none."""
    with ThreadPoolExecutor(len(configs)) as pool:
        built = list(pool.map(lambda config: _try_build(config, dtype), configs))
    if not any(built):
        raise RuntimeError(f"no CUTLASS configuration for {dtype} could be built (see the log)")
    return [config for config, ok in zip(configs, built) if ok]


def _try_build(config: GemmConfig, dtype: torch.dtype) -> bool:
    try:
        cutlass_gemm.library(config, dtype)
        return True
    except Exception as error:  # noqa: BLE001 - a configuration that does not build is left out, with its reason
        logger.warning("lynx: CUTLASS configuration %s unavailable (%s)", config.name, error)
        return False


def fastest_setting(gemm: Callable[[dict[str, Any]], object], configs: Sequence[GemmConfig],
                    timer: Timer) -> dict[str, Any]:  # fmt: skip
    """The configuration, raster order and swizzle that run `gemm` (a GEMM given its setting) fastest."""
    timed = []
    for config in configs:
        for raster in RASTERS:
            for swizzle in SWIZZLES:
                setting = {"config": config.name, "raster": raster, "swizzle": swizzle}
                try:
                    timed.append((timer(lambda setting=setting: gemm(setting)), setting))
                except RuntimeError as error:  # e.g. a cluster the problem cannot take
                    logger.info("lynx: CUTLASS %s skipped: %s", setting, error)
    if not timed:
        raise RuntimeError("no CUTLASS configuration runs this GEMM")
    return min(timed, key=lambda entry: entry[0])[1]

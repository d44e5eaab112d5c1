"""The CUTLASS GEMM as a lowered graph calls it: a direct call from Inductor's generated code, not the op.

Without CUDA graphs a sparse layer pays its GEMM op's host time on every call, and once the compressor's launch
was Inductor's own (`lowered_compressors`) the GEMM op was most of what lynx adds to a layer (≈ 1.8 of ≈ 3.7
cuBLAS calls' worth; benchmarks/RESULTS.md, session 14). Most of that is the dispatcher's round trip into the op's
Python kernel: 12.2 µs a call against 3.4 µs for the same Python called directly, on a 2-core CPU with the library
call stubbed. So Inductor lowers `lynx::cutlass_sparse_mm` as it lowers its own `mm` to cuBLAS: an extern kernel
(`ir.ExternKernelOut`) whose wrapper line calls `extern_kernels.lynx_cutlass_sparse_mm(...)` (`call`) with the
tensors, the setting as constants and Y as a buffer of Inductor's memory plan (`out=`).

Where Inductor writes C++ (`cpp_wrapper`, AOTInductor), which cannot call Python, or where its IR is not what this
lowering builds on (a torch release that changed it), the op stays a fallback kernel, as before.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..kernels import cutlass_gemm
from ..kernels.cutlass_gemm import GemmConfig

logger = logging.getLogger(__name__)

EXTERN_NAME = "lynx_cutlass_sparse_mm"


def call(values: torch.Tensor, metadata: torch.Tensor, weight: torch.Tensor, *rest: Any, out: torch.Tensor) -> None:
    """The extern kernel: ``call(values, metadata, weight, *present tensors, config, raster, swizzle, present,
    out=Y)``, `present` a bit mask over (scale, bias, weight_scale) saying which tensors follow the weight."""
    *tensors, config, raster, swizzle, present = rest
    optional = iter(tensors)
    scale = next(optional) if present & 1 else None
    bias = next(optional) if present & 2 else None
    weight_scale = next(optional) if present & 4 else None
    cutlass_gemm.sparse_mm_into(out, values, metadata, weight, scale, bias, weight_scale, GemmConfig.parse(config),
                                raster, swizzle)  # fmt: skip


def as_lowered(values: torch.Tensor, metadata: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None,
               bias: torch.Tensor | None, config: str, raster: int, swizzle: int,
               weight_scale: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """The GEMM as the lowered graph runs it (Y allocated, then `call`), with about its host cost: the speed rule
    times this."""
    optional = (scale, bias, weight_scale)
    out = values.new_empty((values.shape[0], weight.shape[0]), dtype=cutlass_gemm.output_dtype(weight.dtype))
    call(values, metadata, weight, *(t for t in optional if t is not None), config, raster, swizzle,
         _present(optional), out=out)  # fmt: skip
    return out


def _present(optional) -> int:
    """`call`'s bit mask of the optional tensors (scale, bias, weight_scale) that are there."""
    return sum(1 << index for index, tensor in enumerate(optional) if tensor is not None)


_registered = False


def register() -> None:
    """Give Inductor the lowering and its generated code the extern kernel (idempotent). Called before each lynx
    compile, so that a graph Inductor serves from its cache in a new process finds `extern_kernels`' entry too."""
    global _registered
    if _registered:
        return
    from torch._inductor.lowering import register_lowering
    from torch._inductor.select_algorithm import extern_kernels

    if getattr(extern_kernels, EXTERN_NAME, call) is not call:
        raise RuntimeError(f"Inductor's extern_kernels.{EXTERN_NAME} is taken by something else")
    setattr(extern_kernels, EXTERN_NAME, call)
    register_lowering(torch.ops.lynx.cutlass_sparse_mm.default, type_promotion_kind=None)(_lower)
    _registered = True


def _lower(values, metadata, weight, scale, bias, config, raster, swizzle, weight_scale=None):
    """Inductor's lowering of `lynx::cutlass_sparse_mm`: the extern call where it can be built, else the fallback."""
    from torch._inductor import ir
    from torch._inductor.lowering import fallback_handler
    from torch._inductor.virtualized import V

    # the C entry point reads each operand as a dense row-major array: a copy where Inductor cannot show one is
    values, metadata, weight, scale, bias, weight_scale = (
        None if tensor is None else ir.ExternKernel.require_contiguous(tensor)
        for tensor in (values, metadata, weight, scale, bias, weight_scale))  # fmt: skip
    if not V.graph.cpp_wrapper:
        try:
            return _extern_call(values, metadata, weight, (scale, bias, weight_scale), config, raster, swizzle)
        except Exception as error:  # noqa: BLE001 - Inductor's IR is internal: where it moved, the op still runs
            logger.info("lynx: the CUTLASS GEMM stays an op call in this graph (%s: %s)", type(error).__name__, error)
    return fallback_handler(torch.ops.lynx.cutlass_sparse_mm.default, add_to_fallback_set=False)(
        values, metadata, weight, scale, bias, config, raster, swizzle, weight_scale=weight_scale)  # fmt: skip


def _extern_call(values, metadata, weight, optional, config, raster, swizzle):
    from torch._inductor import ir

    rows, features = values.get_size()[0], weight.get_size()[0]
    layout = ir.FixedLayout(values.get_device(), cutlass_gemm.output_dtype(weight.get_dtype()), [rows, features],
                            [features, 1])  # fmt: skip
    inputs = [values, metadata, weight, *(tensor for tensor in optional if tensor is not None)]
    node = ir.ExternKernelOut(layout=layout, inputs=inputs, constant_args=(config, raster, swizzle, _present(optional)),
                              python_kernel_name=f"extern_kernels.{EXTERN_NAME}")  # fmt: skip
    return ir.TensorBox.create(node)

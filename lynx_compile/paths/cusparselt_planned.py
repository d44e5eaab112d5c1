"""cuSPARSELt with a plan built once per shape: the cuSPARSELt path's GEMM without torch's per-call setup.

`torch._cslt_sparse_mm` initialises three matrix descriptors, a matmul descriptor, an algorithm selection and a plan
on every call, and destroys them after: 0.5–0.9 ms of host time per GEMM, which CUDA graphs hide and nothing else
does. This path drives cuSPARSELt through nvmath-python's bindings (`nvmath.bindings.cusparseLt`, the optional extra
``lynx-compile[cuda]``) and keeps each plan, keyed by device, shape, dtype and algorithm, for the life of the
process; a call is then one `cusparseLtMatmul` on the current stream (so CUDA-graph capture records it as it
records torch's). The descriptors are the ones torch's op builds (aten/src/ATen/native/sparse/cuda/cuSPARSELtOps.cpp):
the compressed activation as a row-major structured (M, K) matrix, the weight (N, K) row-major read transposed, the
output (M, N) row-major, fp32 accumulation; so the compressed operand the compressor writes and the algorithm
cuSPARSELt's search picks are the cuSPARSELt path's own.

Registered only where nvmath-python imports; the speed rule then times it beside the cuSPARSELt path and keeps the
faster per layer. On an H200 (2026-11-26, tests/test_gpu.py `-k planned`) it is bit-exact with torch's op, also under
CUDA-graph capture, and takes FLUX.1 1024² without CUDA graphs from 0.99× to 1.12× over Inductor dense.
"""

from __future__ import annotations

import functools
import threading
from typing import Any, Callable

import numpy as np
import torch

from ..kernel_op import kernel_op, raw_stream
from ..method import Method
from .base import Workload
from .cusparselt import Cusparselt

try:
    from nvmath.bindings import cusparseLt
except ImportError:  # the optional extra is not installed: the path is not registered
    cusparseLt = None

# cuSPARSE/CUDA enum values the bindings take as plain ints (cusparse.h, library_types.h: stable across versions)
_OPERATION_NON_TRANSPOSE, _OPERATION_TRANSPOSE = 0, 1
_ORDER_ROW = 2
_DATA_TYPES = {torch.float16: 2, torch.bfloat16: 14}  # CUDA_R_16F, CUDA_R_16BF
_ALIGNMENT = 16  # bytes, as torch's op declares


def available() -> bool:
    return cusparseLt is not None


@functools.cache
def library_error() -> str | None:
    """Why nvmath cannot load cuSPARSELt here (it loads the library on first use), or None: asked before a layer is
    routed to this path, so a missing library is a reason in `explain`, not an error inside a compiled model."""
    if cusparseLt is None:
        return "nvmath-python is not installed (pip install lynx-compile[cuda])"
    try:
        cusparseLt.get_version(PLANS.handle(torch.cuda.current_device()))  # the handle is kept for later calls
    except Exception as error:  # the library is missing or older than the bindings: any failure means "cannot"
        return f"nvmath-python cannot load cuSPARSELt ({type(error).__name__}: {error})"
    return None


class Plan:
    """One cuSPARSELt matmul plan for (M, K) compressed × (N, K)ᵀ → (M, N), with its workspace size. Its handles
    live as long as the process (plans are few: one per layer shape and algorithm)."""

    def __init__(self, handle: int, rows: int, k: int, n: int, dtype: torch.dtype, algorithm: int) -> None:
        self.handle = handle  # the device's, which every call passes again
        value_type = _DATA_TYPES[dtype]
        self.sparse = cusparseLt.structured_descriptor_init(handle, rows, k, k, _ALIGNMENT, value_type, _ORDER_ROW,
                                                            cusparseLt.Sparsity.SPARSITY_50_PERCENT)  # fmt: skip
        self.weight = cusparseLt.dense_descriptor_init(handle, n, k, k, _ALIGNMENT, value_type, _ORDER_ROW)
        self.out = cusparseLt.dense_descriptor_init(handle, rows, n, n, _ALIGNMENT, value_type, _ORDER_ROW)
        self.matmul = cusparseLt.matmul_descriptor_init(handle, _OPERATION_NON_TRANSPOSE, _OPERATION_TRANSPOSE,
                                                        self.sparse, self.weight, self.out, self.out,
                                                        cusparseLt.ComputeType.COMPUTE_32F)  # fmt: skip
        self.selection = cusparseLt.matmul_alg_selection_init(handle, self.matmul, cusparseLt.MatmulAlg.DEFAULT)
        config = np.array([algorithm], dtype=np.int32)
        cusparseLt.matmul_alg_set_attribute(handle, self.selection, cusparseLt.MatmulAlgAttribute.CONFIG_ID,
                                            config.ctypes.data, config.nbytes)  # fmt: skip
        self.plan = cusparseLt.matmul_plan_init(handle, self.matmul, self.selection)
        self.workspace_bytes = cusparseLt.matmul_get_workspace(handle, self.plan)


def _init_on(device: int) -> int:
    with torch.cuda.device(device):
        return cusparseLt.init()


class Plans:
    """The process's cuSPARSELt handle per device and its plans, built on first use (thread-safe)."""

    def __init__(self, make_plan: Callable[..., Any] = Plan, init: Callable[[int], int] = _init_on) -> None:
        self._make_plan, self._init = make_plan, init
        self._handles: dict[int, int] = {}
        self._plans: dict[tuple, Any] = {}
        self._lock = threading.Lock()
        self.built = 0  # how many plans were built (a test reads it: one per key, however many calls)

    def handle(self, device: int) -> int:
        with self._lock:
            if device not in self._handles:
                self._handles[device] = self._init(device)
            return self._handles[device]

    def get(self, device: int, rows: int, k: int, n: int, dtype: torch.dtype, algorithm: int) -> Any:
        key = (device, rows, k, n, dtype, algorithm)
        plan = self._plans.get(key)
        if plan is None:
            handle = self.handle(device)
            with self._lock:
                plan = self._plans.get(key)
                if plan is None:
                    plan = self._plans[key] = self._make_plan(handle, rows, k, n, dtype, algorithm)
                    self.built += 1
        return plan


PLANS = Plans()
_ALPHA_BETA = np.array([1.0, 0.0], dtype=np.float32)  # host scalars the matmul reads at launch: alive for good


@kernel_op("lynx::cslt_planned_mm")
def cslt_planned_mm(operand: torch.Tensor, weight: torch.Tensor, algorithm: int) -> torch.Tensor:
    """x̃·Wᵀ (rows of the operand × N) for a compressed operand of x̃ and a row-major weight (N, K)."""
    rows, (n, k) = operand.shape[0], weight.shape
    if not weight.is_contiguous():
        weight = weight.contiguous()  # the plan reads W row-major
    device = operand.device.index if operand.device.index is not None else torch.cuda.current_device()
    plan = PLANS.get(device, rows, k, n, weight.dtype, algorithm)
    out = torch.empty(rows, n, device=operand.device, dtype=weight.dtype)
    workspace = torch.empty(plan.workspace_bytes, device=operand.device, dtype=torch.uint8)
    streams = np.array([raw_stream(operand.device)], dtype=np.uint64)
    cusparseLt.matmul(plan.handle, plan.plan, _ALPHA_BETA.ctypes.data, operand.data_ptr(),
                      weight.data_ptr(), _ALPHA_BETA.ctypes.data + 4, out.data_ptr(), out.data_ptr(),
                      workspace.data_ptr() if plan.workspace_bytes else 0, streams.ctypes.data, 1)  # fmt: skip
    return out


@torch.library.register_fake("lynx::cslt_planned_mm")
def _(operand: torch.Tensor, weight: torch.Tensor, algorithm: int) -> torch.Tensor:
    return weight.new_empty(operand.shape[0], weight.shape[0])


class CusparseltPlanned(Cusparselt):
    """The cuSPARSELt path with cached plans: the same compressor, operand, algorithms and epilogue."""

    name = "cusparselt_planned"

    def runs_on(self, device: torch.device) -> bool:
        return available() and super().runs_on(device) and library_error() is None

    def unavailable_reason(self, workload: Workload, method: Method) -> str | None:
        if super().runs_on(workload.device) and library_error() is not None:
            return library_error()
        return super().unavailable_reason(workload, method)

    def sparse_mm(self, operand: torch.Tensor, weight: torch.Tensor, algorithm: int) -> torch.Tensor:
        return torch.ops.lynx.cslt_planned_mm(operand, weight, algorithm)

    def describe(self, params: dict[str, Any]) -> str:
        return super().describe(params).replace("(cuSPARSELt,", "(cuSPARSELt, plan cached,")

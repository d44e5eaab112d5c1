"""What Inductor's generated code calls, read from its text (`torch._inductor.utils.run_and_get_code`): the GPU
tests' way to check what a lowered graph runs."""

import re

from lynx_compile.paths import lowered_gemm


def kernel_launches(code: str, kernel: str) -> int:
    """How often the code launches a user-defined Triton kernel (named after it, with a suffix)."""
    return len(re.findall(rf"\b{kernel}\w*\.run\(", code))


def op_calls(code: str) -> list[str]:
    """The lynx ops the code calls, by name, in order (comments name the ops a lowering replaced: not counted)."""
    return re.findall(r"torch\.ops\.lynx\.(\w+)\.default\(", code)


def extern_gemm_calls(code: str) -> int:
    """How often the code calls the CUTLASS GEMM directly (`paths/lowered_gemm.py`), not through its op."""
    return code.count(f"extern_kernels.{lowered_gemm.EXTERN_NAME}(")

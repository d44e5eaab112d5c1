"""SASS instructions per element of the two 16-bit compressors, compiled for sm_90 without a GPU: the static count of
one program's code per thread over the elements a thread handles (neither kernel loops at the shapes counted).

    python benchmarks/sass_per_element.py      # any machine with Triton's NVIDIA backend (its ptxas and nvdisasm)

A compute-bound kernel's time follows its instructions per element; this counts them where no GPU is at hand.
Counts come from the installed Triton, which may differ from the GPU machine's (benchmarks/RESULTS.md says which).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU, not the interpreter

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from lynx_compile.kernels import prune_compress_24 as general  # noqa: E402
from lynx_compile.kernels import prune_compress_24_single_pass as single_pass  # noqa: E402

THREADS = 128  # both kernels run 4 warps at these shapes
NVDISASM = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")


def sass_lines(fn, signature: dict, constants: dict) -> list[str]:
    """The kernel's SASS instructions for sm_90."""
    source = ASTSource(fn=fn, signature={**signature, **{name: "constexpr" for name in constants}},
                       constexprs={(list({**signature, **constants}).index(name),): value
                                   for name, value in constants.items()})  # fmt: skip
    kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": THREADS // 32})
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(kernel.asm["cubin"])
        cubin.flush()
        listing = subprocess.run([NVDISASM, "-c", cubin.name], capture_output=True, text=True, check=True).stdout
    return [line for line in listing.splitlines() if re.match(r"\s+/\*[0-9a-f]{4}\*/", line)]


def main() -> None:
    pointer_args = {"values_ptr": "*bf16", "meta_ptr": "*u8"}
    one_pass = sass_lines(
        single_pass._single_pass_kernel,
        {"head_ptr": "*bf16", "head_stride": "i32", "tail_ptr": "*bf16", "tail_stride": "i32", "split": "i32",
         **pointer_args, "scale_ptr": "*fp32", "M": "i32", "K": "i32", "eps": "fp32"},
        {"ROWS": 1, "PAIRS": single_pass.PAIRS_PER_PROGRAM, "CHUNKS": 1, "PIECES": (0, 0), "FP16": False, "TWO": False},
    )  # fmt: skip
    one_pass_elements = single_pass.PAIRS_PER_PROGRAM * 8 // THREADS
    two_launch = sass_lines(
        general._compress_kernel,
        {"operands": ("*bf16",), "strides": ("i32", "i32"), "scalars": ("i32",), **pointer_args,
         "energy_ptr": "*fp32", "M": "i32", "M_STORED": "i32", "K": "i32"},
        {"LOAD": general.load_rows, "LOAD_ARGS": (0,), "BLOCK_G": general.GROUPS_PER_PROGRAM,
         "LAYOUT": general.CUTLASS_LAYOUT},
    )  # fmt: skip
    two_launch_elements = 16 * 4 * general.GROUPS_PER_PROGRAM // THREADS
    print(f"triton {triton.__version__}, sm_90, bf16, CUTLASS layout, {THREADS} threads a program")
    for name, lines, elements in (("one pass, a chunk", one_pass, one_pass_elements),
                                  ("general compress kernel", two_launch, two_launch_elements)):  # fmt: skip
        print(f"{name:26} {len(lines):5} instructions a thread, {elements:3} elements: "
              f"{len(lines) / elements:5.1f} per element")


if __name__ == "__main__":
    main()

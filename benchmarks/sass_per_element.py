"""SASS instructions per element of the two 16-bit compressors, compiled for sm_90 without a GPU: the instructions a
thread executes over the elements it handles — the static count where a kernel does not loop, and for the one-pass
kernel reading a row in chunks (FLUX's K = 3072: three), the code outside its loop plus the loop's body once a chunk.

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


def sass_listing(fn, signature: dict, constants: dict) -> list[str]:
    """The kernel's SASS for sm_90, instructions and labels."""
    source = ASTSource(fn=fn, signature={**signature, **{name: "constexpr" for name in constants}},
                       constexprs={(list({**signature, **constants}).index(name),): value
                                   for name, value in constants.items()})  # fmt: skip
    kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": THREADS // 32})
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(kernel.asm["cubin"])
        cubin.flush()
        listing = subprocess.run([NVDISASM, "-c", cubin.name], capture_output=True, text=True, check=True).stdout
    return listing.splitlines()


def is_instruction(line: str) -> bool:
    return re.match(r"\s+/\*[0-9a-f]{4}\*/", line) is not None


def executed(listing: list[str], trips: int) -> int:
    """Instructions a thread executes in a kernel with at most one loop (a backward branch), run `trips` times."""
    labels = {match.group(1): index for index, line in enumerate(listing) if (match := re.match(r"(\.L\w+):", line))}
    total = sum(map(is_instruction, listing))
    for index, line in enumerate(listing):
        target = re.search(r"BRA `\((\.L\w+)\)", line)
        if target and labels.get(target.group(1), index) < index:  # the loop's back edge
            body = sum(map(is_instruction, listing[labels[target.group(1)]:index + 1]))
            return total + (trips - 1) * body
    return total


def main() -> None:
    pointer_args = {"values_ptr": "*bf16", "meta_ptr": "*u8"}
    pairs = single_pass.PAIRS_PER_PROGRAM
    rows = []
    for chunks in (1, 3):
        listing = sass_listing(
            single_pass._single_pass_kernel,
            {"head_ptr": "*bf16", "head_stride": "i32", "tail_ptr": "*bf16", "tail_stride": "i32", "split": "i32",
             **pointer_args, "scale_ptr": "*fp32", "M": "i32", "K": "i32", "eps": "fp32"},
            {"ROWS": 1, "PAIRS": pairs, "CHUNKS": chunks, "PIECES": (0, 0), "FP16": False, "TWO": False},
        )  # fmt: skip
        rows.append((f"one pass, K = {chunks * pairs * 8}", executed(listing, chunks), chunks * pairs * 8 // THREADS))
    general_listing = sass_listing(
        general._compress_kernel,
        {"operands": ("*bf16",), "strides": ("i32", "i32"), "scalars": ("i32",), **pointer_args,
         "energy_ptr": "*fp32", "M": "i32", "M_STORED": "i32", "K": "i32"},
        {"LOAD": general.load_rows, "LOAD_ARGS": (0,), "BLOCK_G": general.GROUPS_PER_PROGRAM,
         "LAYOUT": general.CUTLASS_LAYOUT},
    )  # fmt: skip
    general_elements = 16 * 4 * general.GROUPS_PER_PROGRAM // THREADS
    rows.append(("general compress kernel", executed(general_listing, 1), general_elements))
    print(f"triton {triton.__version__}, sm_90, bf16, CUTLASS layout, {THREADS} threads a program")
    for name, count, elements in rows:
        print(f"{name:26} {count:5} instructions a thread, {elements:3} elements: {count / elements:5.1f} per element")


if __name__ == "__main__":
    main()

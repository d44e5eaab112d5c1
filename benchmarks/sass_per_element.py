"""SASS instructions per element of the compressors (the 16-bit ones, the FP8 one-pass kernel and the FP8 general
kernels' second pass), compiled for sm_90 without a GPU, and the registers a thread holds (with the programs an SM
keeps resident at that count). Instructions: those a thread executes over the elements it handles — the static count
where a kernel does not loop, and where it reads a row in chunks (FLUX's K = 3072: three), the code outside its loops
plus each loop's body once a chunk. Pointers, strides and K are compiled as known multiples of 16, as Triton's
launcher specializes them at these shapes (without it Triton loads a pair of groups as two 64-bit words in two
threads and counts come out 10-25% off). Rows with a GELU folded (x = GELU(t), read on load) are counted where every
loop runs: the 16-bit kernel's, and the FP8 kernel's held and short enough to take every statistic at its first
look (those taking their largest magnitude alone first have a fallback loop, which only rows of small values run
and which would count as executed).

    python benchmarks/sass_per_element.py      # any machine with Triton's NVIDIA backend (ptxas, nvdisasm, cuobjdump)

A compute-bound kernel's time follows its instructions per element, and the latency it can hide its resident
warps: this counts both where no GPU is at hand (a kernel that lost registers' room can be slower with fewer
instructions, RESULTS.md, sessions 23 and 24). Counts come from the installed Triton, which may differ from the GPU
machine's (benchmarks/RESULTS.md says which).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from typing import NamedTuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU, not the interpreter

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import torch  # noqa: E402

from lynx_compile.folds import FoldSpec, loading  # noqa: E402
from lynx_compile.kernels import prune_compress_24 as general  # noqa: E402
from lynx_compile.kernels import prune_quantize_fp8 as fp8_general  # noqa: E402
from lynx_compile.kernels.activations import ACTIVATIONS  # noqa: E402
from lynx_compile.kernels.nm_prune import NORM_EPS  # noqa: E402
from lynx_compile.kernels import prune_compress_24_single_pass as single_pass  # noqa: E402
from lynx_compile.kernels import quantize_fp8_single_pass as fp8  # noqa: E402

NVDISASM, CUOBJDUMP = (os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", tool)
                       for tool in ("nvdisasm", "cuobjdump"))  # fmt: skip
# sm_90's per-SM limits, which decide how many programs stay resident
REGISTERS_PER_SM, WARPS_PER_SM, PROGRAMS_PER_SM = 65536, 64, 32
SPECIALIZED = {"head_ptr", "head_stride", "tail_ptr", "tail_stride", "split", "values_ptr", "meta_ptr", "scale_ptr",
               "energy_ptr", "K"}  # fmt: skip
ONE_PASS_SIGNATURE = {"head_ptr": "*bf16", "head_stride": "i32", "tail_ptr": "*bf16", "tail_stride": "i32",
                      "split": "i32", "values_ptr": "*bf16", "meta_ptr": "*u8", "scale_ptr": "*fp32", "M": "i32",
                      "K": "i32"}  # fmt: skip


class Compiled(NamedTuple):
    listing: list[str]  # SASS, instructions and labels
    registers: int  # a thread's


class Row(NamedTuple):
    name: str
    instructions: int  # a thread executes
    elements: int  # a thread handles
    registers: int
    warps: int


def compiled(fn, signature: dict, constants: dict, warps: int) -> Compiled:
    """The kernel compiled for sm_90: its SASS and its registers a thread."""
    names = list({**signature, **constants})
    source = ASTSource(fn=fn, signature={**signature, **{name: "constexpr" for name in constants}},
                       constexprs={(names.index(name),): value for name, value in constants.items()},
                       attrs={(names.index(name),): [["tt.divisibility", 16]] for name in SPECIALIZED
                              if name in signature and not isinstance(signature[name], tuple)})  # fmt: skip
    kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(kernel.asm["cubin"])
        cubin.flush()
        listing = subprocess.run([NVDISASM, "-c", cubin.name], capture_output=True, text=True, check=True).stdout
        usage = subprocess.run([CUOBJDUMP, "--dump-resource-usage", cubin.name], capture_output=True, text=True,
                               check=True).stdout  # fmt: skip
    return Compiled(listing.splitlines(), int(re.search(r"REG:(\d+)", usage).group(1)))


def resident_programs(registers: int, warps: int) -> int:
    """Programs of `warps` warps an SM keeps at once, by registers (allocated 8 a thread at a time) and warps."""
    by_registers = REGISTERS_PER_SM // (-(-registers // 8) * 8 * 32 * warps)
    return min(by_registers, WARPS_PER_SM // warps, PROGRAMS_PER_SM)


def is_instruction(line: str) -> bool:
    return re.match(r"\s+/\*[0-9a-f]{4}\*/", line) is not None


def executed(listing: list[str], trips: int) -> int:
    """Instructions a thread executes in a kernel whose loops (backward branches, none nested) each run `trips`
    times. Subroutines after the kernel's code (the IEEE division's slow path, called for operands that need it:
    never in these kernels' rows) are not counted."""
    end = next((index for index, line in enumerate(listing) if line.startswith("$__internal")), len(listing))
    listing = listing[:end]
    labels = {match.group(1): index for index, line in enumerate(listing) if (match := re.match(r"(\.L\w+):", line))}
    total = sum(map(is_instruction, listing))
    for index, line in enumerate(listing):
        target = re.search(r"BRA `\((\.L\w+)\)", line)
        if target and labels.get(target.group(1), index) < index - 1:  # a loop's back edge (not the final self-jump)
            total += (trips - 1) * sum(map(is_instruction, listing[labels[target.group(1)]:index + 1]))
    return total


def _fold(activation: str) -> FoldSpec:
    return FoldSpec() if activation == "none" else FoldSpec("activation", (activation,))


def _row(k: int, activation: str = "none"):
    """(operands, loader) of one row of X = act(t) (or X itself) K wide, as the one-pass kernels' `planned` takes it."""
    return loading([torch.empty(1, k, dtype=torch.bfloat16)], _fold(activation))


def one_pass_16_bit(k: int, activation: str = "none") -> Row:
    planned = single_pass.planned(*_row(k, activation)).arguments
    rows, pairs, chunks, warps = (planned[key] for key in ("ROWS", "PAIRS", "CHUNKS", "num_warps"))
    code = ACTIVATIONS[activation]
    kernel = compiled(single_pass._single_pass_kernel, ONE_PASS_SIGNATURE,
                      {"EPS": NORM_EPS, "ROWS": rows, "PAIRS": pairs, "CHUNKS": chunks, "HEAD": code, "TAIL": code,
                       "FP16": False, "TWO": False, "HEAD_CHUNKS": 0}, warps)  # fmt: skip
    name = f"16-bit one pass, K = {k}" + ("" if activation == "none" else f", {activation} folded")
    return Row(name, executed(kernel.listing, chunks), rows * k // (32 * warps), kernel.registers, warps)


def one_pass_fp8(k: int, activation: str = "none") -> Row:
    """(Rows whose first look takes the largest magnitude alone with a folded activation are not counted: their
    fallback loop, which only rows of small values run, would be counted as executed.)"""
    planned = fp8.planned(*_row(k, activation), True, True, True).arguments
    rows, pairs, chunks, held, warps, raw_max = (planned[key] for key in ("ROWS", "PAIRS", "CHUNKS", "HELD",
                                                                         "num_warps", "RAW_MAX"))  # fmt: skip
    assert not raw_max or activation == "none", "the fallback loop would be counted"
    code = ACTIVATIONS[activation]
    kernel = compiled(fp8._single_pass_kernel, {**ONE_PASS_SIGNATURE, "values_ptr": "*fp8e4nv"},
                      {"EPS": NORM_EPS, "ROWS": rows, "PAIRS": pairs, "CHUNKS": chunks, "HELD": held, "HEAD": code,
                       "TAIL": code, "PRUNE": True, "NORM": True, "FP16": False, "TWO": False, "HARDWARE_CAST": True,
                       "HEAD_CHUNKS": 0, "RAW_MAX": raw_max, "NEGATIVE_PEAK": fp8.NEGATIVE_PEAK[code],
                       "PACKED": True}, warps)  # fmt: skip
    name = f"FP8 one pass, K = {k}" + ("" if held else " (read twice)")
    name += "" if code == 0 else f", {activation} folded"
    return Row(name, executed(kernel.listing, chunks), rows * k // (32 * warps), kernel.registers, warps)


def _loader(activation: str):
    """The general kernels' loader of X = act(t) (or X itself) and its run-time ints' signature."""
    if activation == "none":
        return general.load_rows, (0,), ("i32",)
    _, loader = loading([torch.empty(8, 256, dtype=torch.bfloat16)], _fold(activation))
    return loader.fn, loader.args, ("i32",) * len(loader.scalars)


def general_16_bit(activation: str = "none") -> Row:
    warps = 4
    load, args, scalars = _loader(activation)
    kernel = compiled(
        general._compress_kernel,
        {"operands": ("*bf16",), "strides": ("i32", "i32"), "scalars": scalars, "values_ptr": "*bf16",
         "meta_ptr": "*u8", "energy_ptr": "*fp32", "M": "i32", "M_STORED": "i32", "K": "i32"},
        {"LOAD": load, "LOAD_ARGS": args, "BLOCK_G": general.GROUPS_PER_PROGRAM, "LAYOUT": general.CUTLASS_LAYOUT},
        warps,
    )  # fmt: skip
    name = "16-bit general kernel" + ("" if activation == "none" else f", {activation} folded")
    return Row(name, executed(kernel.listing, 1), 16 * 4 * general.GROUPS_PER_PROGRAM // (32 * warps),
               kernel.registers, warps)  # fmt: skip


def general_fp8(activation: str = "none") -> Row:
    """The FP8 general kernels' second pass (prune, quantize, store), which most of their time is."""
    warps = 4
    load, args, scalars = _loader(activation)
    block_g = general.GROUPS_PER_PROGRAM  # `chunking`'s chunk of a long X with one segment
    kernel = compiled(
        fp8_general._quantize_kernel,
        {"operands": ("*bf16",), "strides": ("i32", "i32"), "scalars": scalars, "inverse_ptr": "*fp32",
         "values_ptr": "*u8", "meta_ptr": "*u8", "stats_ptr": "*fp32", "M": "i32", "K": "i32"},
        {"LOAD": load, "LOAD_ARGS": args, "BLOCK_G": block_g, "PRUNE": True, "HARDWARE_CAST": True}, warps,
    )  # fmt: skip
    name = "FP8 general kernels' pass 2" + ("" if activation == "none" else f", {activation} folded")
    return Row(name, executed(kernel.listing, 1), 16 * 4 * block_g // (32 * warps), kernel.registers, warps)


def main() -> None:
    rows = [one_pass_16_bit(3072), one_pass_16_bit(12288), one_pass_16_bit(12288, "gelu_tanh"), general_16_bit(),
            general_16_bit("gelu_tanh")]  # fmt: skip
    rows += [one_pass_fp8(k) for k in (3072, 4608, 5120, 12288)] + [one_pass_fp8(3072, "gelu_tanh"), general_fp8()]
    print(f"triton {triton.__version__}, sm_90, bf16, CUTLASS layout")
    for row in rows:
        print(f"{row.name:46} {row.instructions:5} instructions a thread, {row.elements:3} elements: "
              f"{row.instructions / row.elements:5.1f} per element; {row.registers:3} registers, "
              f"{resident_programs(row.registers, row.warps):2} programs of {row.warps} warps an SM")  # fmt: skip


if __name__ == "__main__":
    main()

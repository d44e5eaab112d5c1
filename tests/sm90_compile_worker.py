"""Compile every Triton kernel lynx launches for the H100's sm_90, without a GPU (for tests/test_sm90_compile.py).

Run in a process of its own with TRITON_INTERPRET unset: the kernels are then `JITFunction`s, and `hardware_cast()`
is True, so they take the branches the GPU runs (inline PTX casts, packed maxima) that the interpreter's tests never
reach. `JITFunction.run` is replaced for the run: where a launch would bind its arguments and compile for the
current device, it binds them the same way (Triton's own binder and argument packing) and compiles for sm_90 with
Triton's compiler down to a cubin (its bundled ptxas), then returns without launching. The tensors are the CPU's:
their addresses only feed the alignment hints. A case fails here where `triton.compile` raises: the code the
interpreter runs happily but the compiler refuses (a loop bound's type, a constexpr misused, an operand's dtype).

Prints one line per case, `MARK` and JSON: {"case", "kernels" (the module-qualified names compiled), "error" (or
null)}; then one line of what the cases should cover (`coverage`).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Callable
from unittest import mock

import torch

SM90 = ("cuda", 90, 32)  # backend, compute capability, warp size
ROWS = 70  # not a multiple of any tile: the kernels' row masks are compiled in
MARK = "sm90:"  # begins the worker's lines of JSON (the compiler prints what it refuses to stdout too)
WIDTHS = (512, 15360)  # a short row, and FLUX's longest (several chunks: the long-row branches)


def kernel_name(kernel) -> str:  # noqa: ANN001 - a JITFunction
    """A kernel's module-qualified name: two modules each define a `_single_pass_kernel`."""
    return f"{kernel.fn.__module__}.{kernel.fn.__name__}"


def compiling_launches(compiled: list[str]) -> Callable:
    """A stand-in for `JITFunction.run` that compiles the launch for sm_90 and appends the kernel's name. It does what
    `run` does before it needs a device (`create_function_from_signature`'s binder, `_pack_args`: private, with the
    same signatures on triton 3.6 to 3.9; should they change, every case fails here, loudly), then compiles."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget(*SM90)
    backend = make_backend(target)

    def run(self, *args, grid, warmup, **kwargs):  # noqa: ANN001, ANN202 - Triton's own signature
        binder = create_function_from_signature(self.signature, self.params, backend)
        bound, specialization, options = binder(*args, **kwargs)
        options, signature, constexprs, attrs = self._pack_args(backend, kwargs, bound, specialization, options)
        kernel = triton.compile(ASTSource(self, signature, constexprs, attrs), target=target, options=options.__dict__)
        assert kernel.asm.get("cubin"), f"{self.__name__}: no cubin"
        if kwargs.get("maxnreg"):  # the cap reached the PTX the assembler reads
            assert f".maxnreg {kwargs['maxnreg']}" in kernel.asm["ptx"], f"{self.__name__}: maxnreg not applied"
        compiled.append(kernel_name(self))

    return run


def norm_inputs(params: tuple[str, ...], dtype: torch.dtype, k: int) -> list[torch.Tensor]:
    """t (2 samples of ROWS // 2 tokens), its statistics, and the norm's other operands `params` names."""
    kind, affine, scaled, shifted = params
    t = torch.randn(2, ROWS // 2, k).to(dtype)
    statistics = [t.float().mean(-1, keepdim=True)] if kind == "layer" else []
    statistics.append(torch.ones(2, ROWS // 2, 1))
    affine_operands = [torch.randn(k) for _ in range({"none": 0, "w": 1, "wb": 2}[affine])]
    per_sample = [torch.randn(2, 1, k).to(dtype) for present in (scaled != "none", shifted != "none") if present]
    return [t, *statistics, *affine_operands, *per_sample]


def fold_examples(dtype: torch.dtype, k: int) -> dict[str, tuple[list[torch.Tensor], object]]:
    """One example of each registered producer fold's inputs, and its spec, for X of ROWS × k (more for some)."""
    from lynx_compile.folds import IDENTITY, FoldSpec

    x = torch.randn(ROWS, k).to(dtype)
    head = 256
    return {
        "identity": ([x], IDENTITY),
        "activation(gelu_tanh)": ([x], FoldSpec("activation", ("gelu_tanh",))),
        "activation(silu)": ([x], FoldSpec("activation", ("silu",))),
        "concat(none, gelu_tanh)": ([x[:, :head], x[:, head:]], FoldSpec("concat", ("none", "gelu_tanh"))),
        "gated(gelu)": ([x, torch.randn(ROWS, k).to(dtype)], FoldSpec("gated", ("gelu",))),
        "norm(layer, wb, one_plus_a, c)": (norm_inputs(("layer", "wb", "one_plus_a", "c"), dtype, k),
                                           FoldSpec("norm", ("layer", "wb", "one_plus_a", "c"))),
        "norm(rms, w, none, none)": (norm_inputs(("rms", "w", "none", "none"), dtype, k),
                                     FoldSpec("norm", ("rms", "w", "none", "none"))),
    }  # fmt: skip


def fp8_capped(registers: int) -> object:
    """The FP8 one-pass kernel at K = 3072 with a thread's registers capped (`bench_fp8_sparse.py`'s variants)."""
    from lynx_compile.folds import IDENTITY, loading
    from lynx_compile.kernels import quantize_fp8_single_pass as single_pass
    from lynx_compile.kernels.prune_compress_24 import cutlass_operand

    operands, loader = loading([torch.randn(ROWS, 3072).to(torch.bfloat16)], IDENTITY)
    values, metadata = cutlass_operand(ROWS, 3072, torch.float8_e4m3fn, torch.device("cpu"))
    return single_pass.launch(operands, loader, values, metadata, True, True, True, max_registers=registers)


def cases() -> dict[str, Callable[[], object]]:
    """Every launch path: the prune kernel, the activation kernel, the FP8 one-pass kernel with its registers capped
    and its rows held in chunks of each length, the 16-bit one's in chunks of 32 and 64 pairs, and each fold through
    each compressor."""
    from lynx_compile import folds
    from lynx_compile.kernels.activations import ACTIVATIONS, activate
    from lynx_compile.kernels.nm_prune import nm_prune_triton

    found: dict[str, Callable[[], object]] = {}
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for n, m in ((2, 4), (1, 4), (4, 8)):
            found[f"nm_prune {n}:{m} {dtype}"] = lambda n=n, m=m, dtype=dtype: nm_prune_triton(
                torch.randn(ROWS, 512).to(dtype), n, m)
    for name in ACTIVATIONS:
        found[f"activate {name}"] = lambda name=name: activate(torch.randn(ROWS, 512).to(torch.bfloat16), name)
    compressors = {
        "cuSPARSELt layout": lambda inputs, spec: folds.compress(inputs, spec, pad_rows_to=16),
        "CUTLASS layout": lambda inputs, spec: folds.compress_cutlass(inputs, spec),
        "CUTLASS layout, general kernel": lambda inputs, spec: folds.compress_cutlass(inputs, spec, single_pass=False),
        "FP8": folds.compress_fp8,
        "FP8 dense": folds.quantize_fp8,
        "written out": folds.load,
    }
    for registers in (64, 56, 48):  # bench_fp8_sparse.py's variants of the FP8 one-pass kernel, registers capped
        found[f"FP8 one pass, maxnreg {registers}"] = lambda registers=registers: fp8_capped(registers)
    for k in (1152, 3072, 8192):  # rows held in `held_blocks`' chunks of 32, 64 and 128 pairs, one a thread
        found[f"FP8 held in chunks K={k}"] = lambda k=k: folds.compress_fp8(
            [torch.randn(ROWS, k).to(torch.bfloat16)], folds.IDENTITY)  # fmt: skip
    # a held row past 384 pairs, its largest magnitude first, through an activation: the read-again loop compiled
    found["FP8 held in chunks K=4608, gelu_tanh folded"] = lambda: folds.compress_fp8(
        [torch.randn(ROWS, 4608).to(torch.bfloat16)], folds.FoldSpec("activation", ("gelu_tanh",)))
    for k in (1152, 4608):  # the 16-bit kernel's rows in `row_blocks`' chunks of 32 (one warp) and 64 pairs
        found[f"CUTLASS layout in chunks K={k}"] = lambda k=k: folds.compress_cutlass(
            [torch.randn(ROWS, k).to(torch.bfloat16)], folds.IDENTITY)  # fmt: skip
    for dtype, widths in ((torch.bfloat16, WIDTHS), (torch.float16, WIDTHS[:1])):
        for k in widths:
            for fold, (inputs, spec) in fold_examples(dtype, k).items():
                for layout, compress in compressors.items():
                    found[f"{fold} {layout} K={k} {dtype}"] = lambda c=compress, i=inputs, s=spec: c(i, s)
    return found


def coverage(planned: list[str]) -> dict[str, list[str]]:
    """What the cases should cover, and what they were: the kernels lynx defines to launch (`*_kernel` JITFunctions
    anywhere in the package), the registered producer folds and those the cases take, the cases planned."""
    import importlib
    import pkgutil

    from triton.runtime.jit import JITFunction

    import lynx_compile
    from lynx_compile.folds import FOLDS

    launched = set()
    for module in pkgutil.walk_packages(lynx_compile.__path__, "lynx_compile."):
        namespace = vars(importlib.import_module(module.name))
        launched |= {kernel_name(value) for name, value in namespace.items()
                     if isinstance(value, JITFunction) and name.endswith("_kernel")}  # fmt: skip
    examples = {spec.kind for _, spec in fold_examples(torch.bfloat16, WIDTHS[0]).values()}
    return {"launched": sorted(launched), "folds": sorted(FOLDS), "fold_examples": sorted(examples),
            "planned": planned}  # fmt: skip


def main() -> None:
    if os.environ.get("TRITON_INTERPRET", "0").lower() not in ("0", "false", ""):
        sys.exit("run with TRITON_INTERPRET unset: the interpreter compiles nothing")
    from triton.runtime.jit import JITFunction

    planned = cases()
    for name, launch in planned.items():
        compiled: list[str] = []
        error = None
        with mock.patch.object(JITFunction, "run", compiling_launches(compiled)):
            try:
                launch()
            except Exception:  # noqa: BLE001 - reported to the test, which names the case
                error = traceback.format_exc(limit=-3)
        print(MARK, json.dumps({"case": name, "kernels": compiled, "error": error}), flush=True)
    print(MARK, json.dumps(coverage(list(planned))), flush=True)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()

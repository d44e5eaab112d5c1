"""Launching a compressor's Triton kernel now, or recording the launch in a graph for Inductor to make.

Eager (the kernel ops, tests, the speed rule), `kernel[grid](...)` runs it. Traced (Inductor's post-grad lowering
traces a path's body on fake tensors: `paths/lowered_compressors.py`), the launch goes through
`torch.library.wrap_triton`: the graph then holds it as a user-defined Triton kernel, which Inductor compiles with
its own launcher and calls from its generated code, with none of lynx's Python around it on every call. A traced
launch cannot read an address or branch on a symbolic size; `provably_aligned` is the address check it can make.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.fx.experimental.symbolic_shapes import statically_known_true

try:
    import triton
except ImportError:
    triton = None

# What Inductor guarantees of a buffer's address in the code it generates: its own allocations are aligned, and a
# graph input whose example was this aligned is copied at run time if it arrives less so (`copy_misaligned_inputs`)
INDUCTOR_ALIGNMENT = 16


def launcher(kernel: Any, traced: bool) -> Any:
    """`kernel` as `launch` functions index it with a grid: itself, or wrapped for tracing."""
    return torch.library.wrap_triton(kernel) if traced else kernel


@dataclass(frozen=True)
class Launch:
    """A kernel's launch planned for given inputs: its grid and every argument (by name) but the outputs it
    writes. `run` launches it into outputs given by name, or records that for Inductor (`traced`)."""

    kernel: Any
    grid: tuple
    arguments: dict[str, Any]

    def run(self, traced: bool = False, **outputs: torch.Tensor) -> None:
        launcher(self.kernel, traced)[self.grid](**self.arguments, **outputs)


def traceable(kernel: Any) -> bool:
    """Whether a launch of `kernel` can be recorded: not under Triton's interpreter (CPU tests), whose kernels
    `wrap_triton` hands back to be called on real tensors."""
    return triton is not None and isinstance(kernel, triton.runtime.JITFunction)


def provably_aligned(x: torch.Tensor, alignment: int) -> bool:
    """Whether a traced (fake) tensor's first element will lie at a multiple of `alignment` bytes (≤ 16) in the
    code Inductor generates: its storage offset provably a multiple of 16 bytes."""
    if alignment > INDUCTOR_ALIGNMENT:
        raise ValueError(f"Inductor guarantees {INDUCTOR_ALIGNMENT}-byte alignment, not {alignment}")
    return statically_known_true(x.storage_offset() * x.element_size() % INDUCTOR_ALIGNMENT == 0)


__all__ = ["INDUCTOR_ALIGNMENT", "Launch", "launcher", "provably_aligned", "traceable"]

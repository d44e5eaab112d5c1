"""The kernel ops a compiled model calls on every forward, registered with as little host cost per call as torch
allows: a schema (inferred from the function's type hints, as `torch.library.custom_op` does) and one plain kernel
for every backend, no autograd layer of Python.

Why not `torch.library.custom_op`: it wraps each call in Python layers of its own (an autograd kernel that checks
grad mode, the wrapper of the device kernel), which measured 27 µs a call on a 2-core CPU against 6 µs for the same
op registered this way (`benchmarks/RESULTS.md`, 2026-11-26 session 10) — and without CUDA graphs a sparse layer
calls two such ops on a GEMM of tens of µs. These ops (compressors, sparse GEMMs) need no backward: they run where
the graph is an inference graph (lowered after AOT), or inside a lynx op whose own autograd formula covers them; a
caller that needs gradients through one gets torch's warning for an op without an autograd formula.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import torch

F = TypeVar("F", bound=Callable)

_LIBRARY = torch.library.Library("lynx", "FRAGMENT")


def kernel_op(qualified_name: str) -> Callable[[F], F]:
    """Register the decorated function as the op ``qualified_name`` ("lynx::name"), one kernel for every backend;
    returns the function unchanged (call the op through ``torch.ops.lynx.<name>``). Register its fake with
    ``torch.library.register_fake(qualified_name)``."""
    namespace, name = qualified_name.split("::")
    if namespace != "lynx":
        raise ValueError(f"lynx's kernel ops live in the lynx namespace, not {namespace!r}")

    def register(fn: F) -> F:
        _LIBRARY.define(name + torch.library.infer_schema(fn, mutates_args=()))
        _LIBRARY.impl(name, fn, "CompositeExplicitAutograd")
        return fn

    return register


def raw_stream(device: torch.device) -> int:
    """The handle of `device`'s current CUDA stream, without the `torch.cuda.Stream` object that
    `torch.cuda.current_stream()` builds (microseconds a call, on a call whose whole host budget is tens)."""
    return torch._C._cuda_getCurrentRawStream(torch.cuda.current_device() if device.index is None else device.index)

"""The kernel ops a compiled model calls on every forward, registered with as little host cost per call as torch
allows: a schema (inferred from the function's type hints, as `torch.library.custom_op` does) and one plain kernel
for every backend, no autograd layer of Python.

Why not `torch.library.custom_op`: it wraps each call in Python layers of its own (an autograd kernel that checks
grad mode, the wrapper of the device kernel), which measured 27 µs a call on a 2-core CPU against 6 µs for the same
op registered this way (`benchmarks/RESULTS.md`, 2026-11-26 session 10) — and without CUDA graphs a sparse layer
calls two such ops on a GEMM of tens of µs. These ops (compressors, sparse GEMMs) have no backward: they run where
the graph is an inference graph (lowered after AOT), or inside a lynx op whose own autograd formula covers them, with
gradients off either way. A call with gradients on and an input that requires them raises, as `custom_op` would
have: without an autograd kernel torch would only warn at backward and leave the gradient out.
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

        def kernel(*args, **kwargs):
            if torch.is_grad_enabled() and _requires_grad((*args, *kwargs.values())):  # off: one check, ≈ 0.1 µs
                raise RuntimeError(f"{qualified_name} has no backward; call it with gradients off (torch.no_grad()), "
                                   "as lynx's compiled graphs and ops do")  # fmt: skip
            return fn(*args, **kwargs)

        _LIBRARY.impl(name, kernel, "CompositeExplicitAutograd")
        return fn

    return register


def _requires_grad(values) -> bool:
    return any(value.requires_grad if isinstance(value, torch.Tensor)
               else isinstance(value, (list, tuple)) and _requires_grad(value) for value in values)  # fmt: skip


def raw_stream(device: torch.device) -> int:
    """The handle of `device`'s current CUDA stream, without the `torch.cuda.Stream` object that
    `torch.cuda.current_stream()` builds (microseconds a call, on a call whose whole host budget is tens)."""
    if device.type != "cuda":
        raise ValueError(f"a CUDA kernel's operands are on {device}")
    return torch._C._cuda_getCurrentRawStream(torch.cuda.current_device() if device.index is None else device.index)

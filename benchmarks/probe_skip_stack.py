"""Probe (not kept): where Inductor decides to skip CUDA graphs for 'mutated inputs' under lynx."""
import traceback

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch._inductor import cudagraph_utils

import lynx_compile

real = cudagraph_utils.log_cudagraph_skip_and_bump_counter


def logged(msg):
    frames = [f"{frame.filename.split('site-packages/')[-1]}:{frame.lineno} {frame.name}"
              for frame in traceback.extract_stack() if "lynx_compile" in frame.filename or "probe" in frame.filename]
    print("SKIP:", msg, "\n   " + "\n   ".join(frames[-8:]), flush=True)
    return real(msg)


cudagraph_utils.log_cudagraph_skip_and_bump_counter = logged

from torch._higher_order_ops import triton_kernel_wrap  # noqa: E402

for name in ("identify_mutated_tensors", "identify_accessed_tensors"):
    if hasattr(triton_kernel_wrap, name):
        original = getattr(triton_kernel_wrap, name)

        def wrapped(kernel, kwargs, *rest, _original=original, _name=name):
            result = _original(kernel, kwargs, *rest)
            print("ANALYSIS", _name, getattr(getattr(kernel, "fn", kernel), "__name__", kernel), "->", result,
                  flush=True)
            return result

        setattr(triton_kernel_wrap, name, wrapped)
import torch._inductor.compile_fx as compile_fx  # noqa: E402

for module in (compile_fx,):
    if hasattr(module, "log_cudagraph_skip_and_bump_counter"):
        module.log_cudagraph_skip_and_bump_counter = logged


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(1024, 4096), nn.Linear(4096, 1024)

    def forward(self, x):
        return x + self.down(F.gelu(self.up(x)))


model = nn.Sequential(Block(), Block()).cuda().to(torch.bfloat16).eval()
x = torch.randn(2, 512, 1024, device="cuda", dtype=torch.bfloat16)
compiled = torch.compile(model, backend="lynx", options={"execution": "sparse", "min_speedup": 1e-3,
                                                         "triton.cudagraphs": True})
with torch.no_grad():
    for _ in range(3):
        torch.compiler.cudagraph_mark_step_begin()
        compiled(x)
print("done", flush=True)

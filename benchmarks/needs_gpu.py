"""The benchmarks that time CUDA kernels stop at once, with a sentence, on a machine without a CUDA GPU (rather than
with torch's "Torch not compiled with CUDA enabled" from inside their first kernel)."""

import sys
from pathlib import Path

import torch


def require_cuda() -> None:
    if not torch.cuda.is_available():
        sys.exit(f"{Path(sys.argv[0]).name} times CUDA kernels: it needs a CUDA GPU (an H100 or H200 for the sparse "
                 "paths), and this machine has none")  # fmt: skip

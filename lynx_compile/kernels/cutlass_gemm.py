"""lynx's CUTLASS 2:4 sparse GEMM (`csrc/sparse_gemm_sm90.cu`): built on first use, cached on disk, called through C.

Each configuration (`GemmConfig`: tile, cluster, schedule) and element type is one shared library, compiled by nvcc
for sm_90a against the C++ headers of the `nvidia-cutlass` wheel (the optional extra ``lynx-compile[cutlass]``) into
``~/.cache/lynx_compile/cutlass/<key>/`` (`cache_dir`; the key hashes the source, the flags and the versions of nvcc
and CUTLASS), under a file lock so that concurrent processes (ranks) build it once. The libraries have plain C entry points and link no
torch: one build serves every torch version, and a call is one ctypes call on the current stream (CUDA-graph capture
records it like any launch). `unavailable_reason()` says why the kernels cannot run here (no nvcc, no headers, no
sm_90 GPU, a failed build); callers then keep the layer on another path.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from ..kernel_op import raw_stream
from .prune_compress_24 import metadata_bytes

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "csrc" / "sparse_gemm_sm90.cu"
BUILD_TIMEOUT_S = 1200
_ELEMENTS = {torch.bfloat16: 0, torch.float16: 1, torch.float8_e4m3fn: 2}  # LYNX_ELEMENT
_STATUS = {1: "the kernel cannot implement this problem", 2: "initialising the kernel failed",
           3: "launching the kernel failed", 4: "a CUDA error"}  # fmt: skip


@dataclass(frozen=True)
class GemmConfig:
    """One compiled kernel: CTA tile (K in logical elements: 64 for 16-bit elements, 128 for FP8, which fixes the
    metadata layout), cluster shape, schedule (cooperative: two consumer warp groups on one tile; ping-pong: on
    two) and tile scheduler (stream-K: the last wave's K loops split over idle CTAs; cooperative only)."""

    tile_m: int = 128
    tile_n: int = 256
    tile_k: int = 64
    cluster_m: int = 2
    cluster_n: int = 1
    pingpong: bool = False
    stream_k: bool = False

    def __post_init__(self) -> None:
        if self.stream_k and self.pingpong:
            raise ValueError("CUTLASS's stream-K scheduler needs the cooperative schedule, not ping-pong")

    @property
    def name(self) -> str:
        schedule = "pingpong" if self.pingpong else "coop"
        return f"{self.tile_m}x{self.tile_n}x{self.tile_k}_c{self.cluster_m}x{self.cluster_n}_{schedule}" + \
            ("_streamk" if self.stream_k else "")  # fmt: skip

    @staticmethod
    @functools.cache  # the op parses its setting on every call: a regex each time is host time on the hot path
    def parse(name: str) -> GemmConfig:
        match = re.fullmatch(r"(\d+)x(\d+)x(\d+)_c(\d+)x(\d+)_(coop|pingpong)(_streamk)?", name)
        if match is None:
            raise ValueError(f"not a CUTLASS configuration name: {name!r}")
        *sizes, schedule, stream_k = match.groups()
        return GemmConfig(*map(int, sizes), pingpong=schedule == "pingpong", stream_k=stream_k is not None)

    def defines(self, dtype: torch.dtype) -> list[str]:
        values = {"LYNX_ELEMENT": _ELEMENTS[dtype], "LYNX_TILE_M": self.tile_m, "LYNX_TILE_N": self.tile_n,
                  "LYNX_TILE_K": self.tile_k, "LYNX_CLUSTER_M": self.cluster_m, "LYNX_CLUSTER_N": self.cluster_n,
                  "LYNX_PINGPONG": int(self.pingpong), "LYNX_STREAMK": int(self.stream_k)}  # fmt: skip
        return [f"-D{key}={value}" for key, value in values.items()]


# What the speed rule tries per shape (with every raster order and swizzle in `SWIZZLES`). 128×256×64 is cuSPARSELt's
# fastest tile on FLUX shapes; a cluster of 4 along M (W multicast to more CTAs) wins on N = 3072, 2 elsewhere;
# 128×128 is for small N or few tokens. Stream-K pays where the K loop is long and the tiles leave the last wave
# part-empty (FLUX's single-block output, K = 15360, N = 3072: 2–5%); with K = 3072 its partial sums cost more than
# the idle SMs (the attention output: 4–13% slower). 256×128 and a 64×256 ping-pong tile were never fastest on FLUX
# or Wan shapes (benchmarks/tune_cutlass.py, RESULTS.md 2026-11-26 and 2026-11-28), so they are not tried.
CONFIGS = (
    GemmConfig(128, 256, 64, 2, 1),
    GemmConfig(128, 256, 64, 4, 1),
    GemmConfig(128, 128, 64, 2, 1),
    GemmConfig(128, 256, 64, 4, 1, stream_k=True),
)
SWIZZLES = (1, 2, 4)

# FP8 e4m3 (output bf16), CUTLASS's fast accumulation: tile K 128, the 8-bit metadata atom's width. 128×128 without
# a cluster is for few tokens (FLUX's 512 text tokens: 0.75–1.11× dense FP8 with 128×256 tiles, 1.01–1.23× with it);
# stream-K as for bf16.
FP8_CONFIGS = (
    GemmConfig(128, 256, 128, 2, 1),
    GemmConfig(128, 256, 128, 4, 1),
    GemmConfig(128, 128, 128, 1, 1),
    GemmConfig(128, 256, 128, 2, 1, stream_k=True),
)
RASTERS = {"heuristic": 0, "along_m": 1, "along_n": 2}


def output_dtype(dtype: torch.dtype) -> torch.dtype:
    """Y's dtype for operands of `dtype`: the same for 16-bit, bf16 for FP8."""
    return torch.bfloat16 if dtype == torch.float8_e4m3fn else dtype


def cutlass_include() -> Path | None:
    """CUTLASS's include directory: $CUTLASS_PATH/include, or the `nvidia-cutlass` wheel's (`cutlass_library`)."""
    if os.environ.get("CUTLASS_PATH"):
        path = Path(os.environ["CUTLASS_PATH"]) / "include"
        return path if (path / "cutlass" / "cutlass.h").exists() else None
    import importlib.util

    spec = importlib.util.find_spec("cutlass_library")
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / "source" / "include"
        if (path / "cutlass" / "cutlass.h").exists():
            return path
    return None


def nvcc() -> str | None:
    """nvcc from $CUDA_HOME, else on PATH."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and (Path(home) / "bin" / "nvcc").exists():
        return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


@functools.cache
def toolchain_error() -> str | None:
    """Why the kernels cannot be built here, or None."""
    if nvcc() is None:
        return "no nvcc found (install the CUDA toolkit, or set CUDA_HOME)"
    if cutlass_include() is None:
        return "CUTLASS's headers are not installed (pip install lynx-compile[cutlass], or set CUTLASS_PATH)"
    return None


def unavailable_reason(device: torch.device | None = None) -> str | None:
    """Why the kernels cannot run on `device` (default: the current GPU), or None."""
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    if torch.cuda.get_device_capability(device) != (9, 0):
        return "the CUTLASS sparse GEMM is built for sm_90 (H100, H200) only"
    return toolchain_error()


def cache_dir() -> Path:
    """Where built libraries live: $LYNX_BUILD_DIR, else ``lynx_compile/cutlass`` in the user's cache directory (as
    torch's own extensions go to ~/.cache/torch_extensions). Not the measurement cache: a build outlives it."""
    if os.environ.get("LYNX_BUILD_DIR"):
        return Path(os.environ["LYNX_BUILD_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lynx_compile" / "cutlass"


FLAGS = ("-O3", "-std=c++17", "-arch=sm_90a", "-shared", "-Xcompiler", "-fPIC", "--expt-relaxed-constexpr", "-DNDEBUG")


def _compile_command(config: GemmConfig, dtype: torch.dtype, output: Path) -> list[str]:
    include = cutlass_include()
    return [nvcc(), *FLAGS, f"-I{include}", f"-I{include.parent / 'tools' / 'util' / 'include'}",
            *config.defines(dtype), "-o", str(output), str(SOURCE)]  # fmt: skip


@functools.cache
def _toolchain_fingerprint() -> str:
    """nvcc's release and CUTLASS's version: what, besides the source and flags, decides the binary."""
    version = subprocess.run([nvcc(), "--version"], capture_output=True, text=True, check=False).stdout
    release = re.search(r"release [\d.]+", version)
    version_header = cutlass_include() / "cutlass" / "version.h"
    numbers = re.findall(r"#define CUTLASS_(?:MAJOR|MINOR|PATCH) (\d+)", version_header.read_text()) \
        if version_header.exists() else []  # fmt: skip
    return f"nvcc {release.group(0) if release else version} cutlass {'.'.join(numbers)}"


def library_path(config: GemmConfig, dtype: torch.dtype) -> Path:
    """Where this configuration's library is (or will be) cached: keyed by the source, the flags and the toolchain,
    not by where the toolchain lives, so a cache built on one machine serves another with the same versions."""
    key = hashlib.sha256("\n".join([SOURCE.read_text(), " ".join((*FLAGS, *config.defines(dtype))),
                                    _toolchain_fingerprint()]).encode()).hexdigest()[:16]  # fmt: skip
    return cache_dir() / key / f"sparse_gemm_{config.name}_{str(dtype).removeprefix('torch.')}.so"


def build(config: GemmConfig, dtype: torch.dtype) -> Path:
    """The configuration's library, compiled now unless cached (minutes of one CPU core; once per machine)."""
    error = toolchain_error()
    if error is not None:
        raise RuntimeError(error)
    path = library_path(config, dtype)
    if path.exists():
        return path
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it: wait, then take its result
        if path.exists():
            return path
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        logger.warning("lynx: building the CUTLASS sparse GEMM %s (%s) with nvcc, once: a few CPU-minutes",
                       config.name, dtype)  # fmt: skip
        try:
            result = subprocess.run(_compile_command(config, dtype, partial), capture_output=True, text=True,
                                    timeout=BUILD_TIMEOUT_S, check=False)  # fmt: skip
        except subprocess.TimeoutExpired:
            partial.unlink(missing_ok=True)
            raise RuntimeError(f"building the CUTLASS sparse GEMM {config.name} took over {BUILD_TIMEOUT_S} s") from None
        if result.returncode != 0:
            partial.unlink(missing_ok=True)
            log = path.with_suffix(".log")
            log.write_text(result.stdout + result.stderr)
            raise RuntimeError(f"building the CUTLASS sparse GEMM {config.name} failed (nvcc log: {log})")
        os.replace(partial, path)
    return path


class Library:
    """One loaded configuration: its C entry points, with argument types declared."""

    def __init__(self, path: Path) -> None:
        self.lib = ctypes.CDLL(str(path))
        p, i, size = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
        self.lib.lynx_sparse_gemm.argtypes = [p, p, p, p, p, p, p, i, i, i, p, i, i, p]
        self.lib.lynx_sparse_gemm.restype = i
        self.lib.lynx_sparse_gemm_workspace.argtypes = [i, i, i, i, i]
        self.lib.lynx_sparse_gemm_workspace.restype = size
        self.lib.lynx_sparse_gemm_compress_reference.argtypes = [p, p, p, i, i, p]
        self.lib.lynx_sparse_gemm_compress_reference.restype = i
        self.lib.lynx_sparse_gemm_metadata_offset.argtypes = [i, i, i, i]
        self.lib.lynx_sparse_gemm_metadata_offset.restype = ctypes.c_longlong
        self._workspace: dict[tuple[int, ...], int] = {}

    def info(self) -> list[int]:
        """[element (0 bf16, 1 fp16, 2 e4m3), tile M, N, K, cluster M, N, ping-pong, metadata atom rows, atom K,
        logical elements per byte, stream-K]."""
        values = (ctypes.c_int * 11)()
        self.lib.lynx_sparse_gemm_info(values)
        return list(values)

    def compress_reference(self, dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CUTLASS's own compressor (the GPU tests' reference) on an already 2:4 (M, K) matrix of this library's
        element type: (values, metadata), both filled with 0xAB bytes first, so that anything it leaves unwritten
        shows."""
        rows, k = dense.shape
        values = torch.empty(rows, k // 2, dtype=dense.dtype, device=dense.device)
        values.view(torch.uint8).fill_(0xAB)
        metadata = torch.full((metadata_bytes(rows, k),), 0xAB, dtype=torch.uint8, device=dense.device)
        status = self.lib.lynx_sparse_gemm_compress_reference(dense.data_ptr(), values.data_ptr(), metadata.data_ptr(),
                                                              rows, k, torch.cuda.current_stream().cuda_stream)  # fmt: skip
        if status:
            raise RuntimeError(f"CUTLASS's compressor on {rows}x{k}: {_STATUS.get(status, status)}")
        return values, metadata

    def metadata_offset(self, m: int, k: int, row: int, col: int) -> int:
        return self.lib.lynx_sparse_gemm_metadata_offset(m, k, row, col)

    def workspace_bytes(self, m: int, n: int, k: int, raster: int, swizzle: int) -> int:
        key = (m, n, k, raster, swizzle)
        if key not in self._workspace:
            self._workspace[key] = self.lib.lynx_sparse_gemm_workspace(*key)
        return self._workspace[key]


_LIBRARIES: dict[tuple[GemmConfig, torch.dtype], Library] = {}
_LOCK = threading.Lock()


def library(config: GemmConfig, dtype: torch.dtype) -> Library:
    """The configuration's loaded library, built first if needed."""
    key = (config, dtype)
    if key not in _LIBRARIES:
        with _LOCK:
            if key not in _LIBRARIES:
                _LIBRARIES[key] = Library(build(config, dtype))
    return _LIBRARIES[key]


def sparse_mm(values: torch.Tensor, metadata: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None,
              bias: torch.Tensor | None, config: GemmConfig, raster: int = 0, swizzle: int = 1,
              weight_scale: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """s ⊙ (X̃·Wᵀ) ⊙ w + b (M × N) on the current stream: X̃ as `prune_compress_24_cutlass` writes it (values
    M × K/2 and metadata), W (N, K) as nn.Linear stores it, s (M,) and w (N,) fp32, b (N,) of the output dtype
    (`output_dtype`), each optional."""
    out = values.new_empty((values.shape[0], weight.shape[0]), dtype=output_dtype(values.dtype))
    sparse_mm_into(out, values, metadata, weight, scale, bias, weight_scale, config, raster, swizzle)
    return out


def sparse_mm_into(out: torch.Tensor, values: torch.Tensor, metadata: torch.Tensor, weight: torch.Tensor,
                   scale: torch.Tensor | None, bias: torch.Tensor | None, weight_scale: torch.Tensor | None,
                   config: GemmConfig, raster: int, swizzle: int) -> None:  # fmt: skip
    """`sparse_mm` written into `out` (M × N, contiguous, the output dtype), as Inductor's code calls it
    (`paths/lowered_gemm.py`)."""
    m, (n, k) = values.shape[0], weight.shape
    if values.shape[1] * 2 != k or weight.dtype != values.dtype or not weight.is_contiguous():
        raise ValueError(f"operands do not match: values {tuple(values.shape)} {values.dtype}, weight "
                         f"{tuple(weight.shape)} {weight.dtype} (contiguous: {weight.is_contiguous()})")  # fmt: skip
    if out.shape != (m, n) or out.dtype != output_dtype(values.dtype) or not out.is_contiguous():
        raise ValueError(f"the output {tuple(out.shape)} {out.dtype} (contiguous: {out.is_contiguous()}) is not the "
                         f"GEMM's {m}x{n} {output_dtype(values.dtype)}")  # fmt: skip
    if m == 0:
        return
    lib = library(config, values.dtype)
    workspace_bytes = lib.workspace_bytes(m, n, k, raster, swizzle)
    workspace = values.new_empty((workspace_bytes,), dtype=torch.uint8) if workspace_bytes else None
    status = lib.lib.lynx_sparse_gemm(
        values.data_ptr(), metadata.data_ptr(), weight.data_ptr(), _pointer(scale), _pointer(weight_scale),
        _pointer(bias), out.data_ptr(), m, n, k, _pointer(workspace), raster, swizzle, raw_stream(values.device),
    )  # fmt: skip
    if status:
        raise RuntimeError(f"CUTLASS sparse GEMM {config.name} on {m}x{k}->{n}: {_STATUS.get(status, status)}")


def _pointer(tensor: torch.Tensor | None) -> int | None:
    return tensor.data_ptr() if tensor is not None else None

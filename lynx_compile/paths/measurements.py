"""The speed rule's measurements: a path against dense for one workload, timed once, then remembered.

Both sides time the layer with its folded producer and without its epilogue (Inductor fuses bias and norm scale
into the consumer either way), on the same random data, in the same process: CUDA-graph replays when the compile
uses CUDA graphs, host time included otherwise. A path that applies the norm scale in a pass of its own also times
that pass alone (`Measurement.epilogue_ms`): among the paths that beat dense, the speed rule takes the one fastest
with it, since Inductor does not always fuse it (FLUX.1 and Wan ran faster end to end with every layer on the
CUTLASS path, whose kernel applies the scale, than with the paths picked by their times without it;
benchmarks/RESULTS.md 2026-11-26); the threshold against dense stays on the time without it, which is what a user
without that path gets. A measurement is keyed by the path, the GPU, its driver, the
library versions and the workload (`measurement_key`), and looked up, in order: in this process; in the policy the
compile uses (`Policy.with_measurements`, e.g. to give every rank the same decisions); on disk, in
``$LYNX_CACHE_DIR`` (default: ``lynx/`` in Inductor's cache directory, which ``TORCHINDUCTOR_CACHE_DIR`` moves), so
a second process does not time again. ``TORCHINDUCTOR_FORCE_DISABLE_CACHES=1`` turns the disk cache off.

Under torch.distributed (several ranks, e.g. diffusers' context parallelism under torchrun), rank 0 decides: it
resolves each measurement as above and broadcasts it, and every rank takes rank 0's, so all ranks compile the same
decisions into their graphs. That needs every rank to compile the same graphs in the same order (one model, SPMD),
as collectives always do; ``LYNX_SHARE_MEASUREMENTS=0`` makes each rank measure on its own instead.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from ..files import write_atomically
from ..float8 import dense_float8_linears, quantize_weight
from ..folds import IDENTITY, load
from ..policy_schema import PolicyError, check_measurement
from ..timing import timer_for
from .base import Measurement, SparsePath, Workload

logger = logging.getLogger(__name__)

_MEASURED: dict[str, Measurement] = {}
# v2: epilogue_ms (v1 records lack it and would favour cuSPARSELt); v3: the one-pass FP8 compressor and quantizer and
# float8 groups' dense side (v2's float8 records time slower kernels on both sides, keys unchanged); v4: dense makes a
# folded producer's x in one kernel, as Inductor does (v3 ran its torch reference: several kernels for a gated or
# norm producer); v5: the kernel ops' host cost cut (no-graph timings of v4 charge the sparse side 2-3× its host time
# now) and the no-graph timer a median of rounds
_CACHE_FILE = "measurements-v5.json"


def device_fingerprint(device: torch.device) -> str:
    """What a measurement is only valid for: the GPU, its driver, CUDA, cuSPARSELt and torch."""
    if device.type != "cuda":
        return f"{device.type} torch {torch.__version__}"
    major, minor = torch.cuda.get_device_capability(device)
    return (f"{torch.cuda.get_device_name(device)} sm_{major}{minor} driver {_driver_version()} "
            f"cuda {torch.version.cuda} cusparselt {torch.backends.cusparselt.version()} torch {torch.__version__}")


@functools.cache
def _driver_version() -> str:
    try:  # torch has no getter of its own; the kernel module reports it on Linux
        first = Path("/proc/driver/nvidia/version").read_text().splitlines()[0]
    except (OSError, IndexError):
        return "unknown"
    return next((word for word in first.split() if word[:1].isdigit() and "." in word), "unknown")


def measurement_key(path: SparsePath, workload: Workload) -> str:
    return f"{path.name} | {device_fingerprint(workload.device)} | {workload.describe()}"


def measure(path: SparsePath, workload: Workload, stored: Mapping[str, Mapping[str, Any]] | None = None) -> Measurement:
    """The path's measurement for the workload: from this process's cache, from `stored` (a policy's), from the
    disk cache, or timed; under torch.distributed, rank 0's."""
    if workload.tokens % path.row_multiple:  # a symbolic M, timed at a token count the path runs
        multiple = path.row_multiple
        workload = workload.with_tokens(max(multiple, workload.tokens // multiple * multiple))
    key = measurement_key(path, workload)
    if _sharing_ranks():
        return _from_rank_zero(key, measurement_key(path, workload.with_tokens(0)),
                               lambda: _resolve(key, path, workload, stored))  # fmt: skip
    return _resolve(key, path, workload, stored)


def _resolve(key: str, path: SparsePath, workload: Workload, stored: Mapping[str, Mapping[str, Any]] | None):
    if key in _MEASURED:
        return _MEASURED[key]
    if stored is not None and key in stored:
        _MEASURED[key] = Measurement.from_dict(dict(stored[key]))
        logger.info("lynx: %s: measurement taken from the policy", key)
    elif key in (on_disk := _read_disk_cache()):
        _MEASURED[key] = Measurement.from_dict(on_disk[key])
        logger.info("lynx: %s: measurement taken from the disk cache %s", key, disk_cache_path())
    else:
        _MEASURED[key] = _time(path, workload)
        _write_disk_cache(key, _MEASURED[key])
    return _MEASURED[key]


def _sharing_ranks() -> bool:
    import torch.distributed as dist

    if os.environ.get("LYNX_SHARE_MEASUREMENTS", "1") == "0" or not dist.is_available() or not dist.is_initialized():
        return False
    return dist.get_world_size() > 1


def _from_rank_zero(key: str, layer: str, resolve) -> Measurement:  # noqa: ANN001
    """Rank 0's measurement of `key`, on every rank (each rank calls this for the same layers in the same order).

    `layer` is the key without the token count: ranks may hold a few tokens more or fewer than rank 0 (a sequence
    that does not divide evenly) and still take rank 0's measurement, so that every rank decides alike. If rank 0
    cannot resolve it, every rank raises, rather than leave the others waiting in the broadcast."""
    import torch.distributed as dist

    payload: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            payload = [(layer, resolve().to_dict(), None)]
        except Exception as error:  # noqa: BLE001 - re-raised below, after the other ranks have heard of it
            payload = [(layer, None, f"{type(error).__name__}: {error}")]
            failure = error
    dist.broadcast_object_list(payload, src=0)
    rank_zero_layer, record, error = payload[0]
    if error is not None:
        if dist.get_rank() == 0:
            raise failure
        raise RuntimeError(f"lynx: rank 0 could not measure {key!r}: {error}")
    if rank_zero_layer != layer:
        raise RuntimeError(f"lynx: rank {dist.get_rank()} compiles another layer than rank 0 ({key!r} here, "
                           f"{rank_zero_layer!r} there): compile the same model on every rank, or give every "
                           "rank one policy with its measurements and set LYNX_SHARE_MEASUREMENTS=0")  # fmt: skip
    _MEASURED[key] = Measurement.from_dict(record)
    return _MEASURED[key]


def clear_measurements() -> None:
    """Forget every measurement of this process (the next compile reads a policy's or the disk cache, or times)."""
    _MEASURED.clear()


def disk_cache_path() -> Path | None:
    """Where measurements persist across processes; None when torch's caches are force-disabled."""
    from torch._inductor import config as inductor_config
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    if inductor_config.force_disable_caches:
        return None
    return Path(os.environ.get("LYNX_CACHE_DIR") or Path(cache_dir()) / "lynx") / _CACHE_FILE


def _read_disk_cache() -> dict[str, dict[str, Any]]:
    """The cache file's measurements, parsed again only when the file changed (a compile looks up every layer)."""
    path = disk_cache_path()
    if path is None or not path.exists():
        return {}
    try:
        stamp = (str(path), path.stat().st_mtime_ns, path.stat().st_size)
        if _DISK_READ[0] != stamp:
            data = json.loads(path.read_text())
            records = {key: value for key, value in data.items() if _well_formed(key, value)}
            if len(records) < len(data):
                logger.warning("lynx: ignoring %d malformed record(s) of the measurement cache %s: measured again",
                               len(data) - len(records), path)  # fmt: skip
            _DISK_READ[:] = [stamp, records]
        return _DISK_READ[1]
    except (OSError, ValueError, AttributeError) as error:  # a damaged cache is re-measured, never fatal
        logger.warning("lynx: ignoring the measurement cache %s (%s)", path, error)
        return {}


_DISK_READ: list[Any] = [None, {}]  # (the file's path, mtime and size when read, its measurements)


def _well_formed(key: str, value: Any) -> bool:
    """Whether a cache record is a measurement a compile can use (a damaged one would fail every compile that looks
    it up, or divide by a zero time)."""
    try:
        check_measurement(key, value)
    except PolicyError:
        return False
    return True


def _write_disk_cache(key: str, measurement: Measurement) -> None:
    """Add one measurement to the cache file: read, merge, write to a temporary file, rename over (atomic)."""
    path = disk_cache_path()
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {**_read_disk_cache(), key: measurement.to_dict()}
        write_atomically(path, json.dumps(data, indent=1, sort_keys=True).encode())
    except OSError as error:  # a read-only cache directory costs a re-measurement next time, nothing else
        logger.warning("lynx: could not write the measurement cache %s (%s)", path, error)


def measured() -> dict[str, dict[str, Any]]:
    """Every measurement this process made or loaded, keyed as `measure` looks them up (for `Policy`)."""
    return {key: measurement.to_dict() for key, measurement in _MEASURED.items()}


def _time(path: SparsePath, workload: Workload) -> Measurement:
    started = time.perf_counter()  # what a first compile spends measuring, in the log line
    timer = timer_for(workload.cuda_graphs, workload.device)
    with torch.no_grad(), torch._subclasses.fake_tensor.unset_fake_temporarily():
        if workload.written and not path.times_written:  # the producer's own kernel, then the path on x as given
            unfolded = replace(workload, fold=IDENTITY, input_widths=(), input_rows=(), written=False)
            params, sparse = path.tune(unfolded, timer)
            inputs = workload.example()[0]
            sparse += timer(lambda: load(inputs, workload.fold))
        else:
            params, sparse = path.tune(workload, timer)
        epilogue = path.unfused_epilogue_ms(workload, timer)
        # dense after the path's timings, in the state they leave the GPU in: timed first, on a GPU not yet hot,
        # FLUX's 4608 × 15360 → 3072 ran in 0.60 ms, after a path's tuning in 0.71, and the layer measured 0.81×
        # dense one time and 1.07× the next (H200, benchmarks/RESULTS.md, session 15)
        dense = _dense_ms(workload)
    result = Measurement(path.name, tuple(sorted(params.items())), dense, sparse, workload.tokens, epilogue)
    logger.info("lynx: %s (%s): dense %.4f ms, sparse %.4f ms, %.2f× (measured in %.1f s)", workload.describe(),
                path.describe(params), dense, sparse, result.speedup, time.perf_counter() - started)  # fmt: skip
    return result


def _dense_ms(workload: Workload) -> float:
    """Dense `F.linear` on x as its producer writes it (one per member of a group, as the model runs them), timed
    beside each path; for a float8 layer, rowwise FP8 dense (a group's x quantized once)."""
    if workload.written:  # dense is the same either way: torchao's quantization with the producer fused
        return _dense_ms(replace(workload, written=False))
    inputs, weight, lora = workload.example()
    weights = weight.split(workload.members)
    if workload.float8:  # torchao's float8 linear: the activation quantized per token, `torch._scaled_mm`
        float8_weights = [quantize_weight(member) for member in weights]
        return timer_for(workload.cuda_graphs, workload.device)(
            lambda: dense_float8_linears(inputs, workload.fold, float8_weights, [None] * len(float8_weights)))

    def dense() -> object:  # x as one kernel writes it from the producer's inputs, Inductor's way
        x = inputs[0] if workload.fold == IDENTITY else load(inputs, workload.fold)
        return [F.linear(x, member) for member in weights]

    return timer_for(workload.cuda_graphs, workload.device)(dense)

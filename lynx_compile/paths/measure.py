"""The speed rule's measurements: a path against dense for one workload, timed once per process, and storable.

Both sides time the layer with its folded producer and without its epilogue (Inductor fuses bias and norm scale
into the consumer either way), on the same random data, in the same process: CUDA-graph replays when the compile
uses CUDA graphs, host time included otherwise. A measurement is keyed by the path, the GPU and library versions
and the workload (`measurement_key`), cached for the process, and exported by `measured()` so that a `Policy` can
carry it (`Policy.with_measurements`): another process or another rank then takes the same decision without timing.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from ..folds import assemble
from ..timing import timer_for
from .base import Measurement, SparsePath, Workload

logger = logging.getLogger(__name__)

_MEASURED: dict[str, Measurement] = {}


def device_fingerprint(device: torch.device) -> str:
    """What a measurement is only valid for: the GPU, its driver-facing libraries and torch."""
    if device.type != "cuda":
        return f"{device.type} torch {torch.__version__}"
    major, minor = torch.cuda.get_device_capability(device)
    return f"{torch.cuda.get_device_name(device)} sm_{major}{minor} torch {torch.__version__} cuda {torch.version.cuda}"


def measurement_key(path: SparsePath, workload: Workload) -> str:
    return f"{path.name} | {device_fingerprint(workload.device)} | {workload.describe()}"


def measure(path: SparsePath, workload: Workload, stored: Mapping[str, Mapping[str, Any]] | None = None) -> Measurement:
    """The path's measurement for the workload: from this process's cache, from `stored` (a policy's), or timed."""
    if workload.tokens % path.row_multiple:  # a symbolic M, timed at a token count the path runs
        multiple = path.row_multiple
        workload = workload.with_tokens(max(multiple, workload.tokens // multiple * multiple))
    key = measurement_key(path, workload)
    if key not in _MEASURED:
        if stored is not None and key in stored:
            _MEASURED[key] = Measurement.from_dict(dict(stored[key]))
            logger.info("lynx: %s: measurement taken from the policy", key)
        else:
            _MEASURED[key] = _time(path, workload)
    return _MEASURED[key]


def clear_measurements() -> None:
    """Forget every measurement of this process (the next compile times again, or reads a policy's)."""
    _MEASURED.clear()
    _dense_ms.cache_clear()


def measured() -> dict[str, dict[str, Any]]:
    """Every measurement this process made or loaded, keyed as `measure` looks them up (for `Policy`)."""
    return {key: measurement.to_dict() for key, measurement in _MEASURED.items()}


def _time(path: SparsePath, workload: Workload) -> Measurement:
    timer = timer_for(workload.cuda_graphs, workload.device)
    with torch.no_grad(), torch._subclasses.fake_tensor.unset_fake_temporarily():
        dense = _dense_ms(workload)
        params, sparse = path.tune(workload, timer)
    result = Measurement(path.name, tuple(sorted(params.items())), dense, sparse, workload.tokens)
    logger.info("lynx: %s (%s): dense %.4f ms, sparse %.4f ms, %.2f×", workload.describe(), path.describe(params),
                dense, sparse, result.speedup)  # fmt: skip
    return result


@functools.cache
def _dense_ms(workload: Workload) -> float:
    """Dense `F.linear` on x as its producer writes it, timed once per workload for every path."""
    inputs, weight, lora = workload.example()
    return timer_for(workload.cuda_graphs, workload.device)(lambda: F.linear(assemble(inputs, workload.fold), weight))

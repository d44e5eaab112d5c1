"""Sparse paths, as a registry: the ways a sparsified linear can run.

The decide pass asks every registered path of the chosen execution why it cannot run a layer (`unavailable_reason`),
measures the rest against dense (`measurements.measure`), and takes the fastest that beats dense by `min_speedup`;
the op dispatches on the plan's path name (`get_path`), and the Inductor lowering asks the same path for its parts.
Adding a path is one module beside these (a `SparsePath` subclass: see `base.py`) plus one `register_path` line.
"""

from __future__ import annotations

import torch

from ..registry import Registry
from .base import Measurement, SparsePath, Workload
from .cusparselt import Cusparselt
from .cusparselt_planned import CusparseltPlanned
from .cusparselt_planned import available as planned_cusparselt_available
from .cutlass import Cutlass
from .cutlass_float8 import CutlassFloat8
from .measurements import clear_measurements, measure, measured
from .simulate import Simulate
from .simulate_float8 import SimulateFloat8

PATHS: Registry[SparsePath] = Registry("sparse path")


def register_path(path: SparsePath) -> SparsePath:
    return PATHS.register(path.name, path)


def get_path(name: str) -> SparsePath:
    return PATHS[name]


def paths_for(execution: str, float8: bool = False) -> list[SparsePath]:
    """The registered paths an `execution` option routes layers to: those of plain weights, or with `float8` those
    of torchao float8 weights."""
    return [path for path in PATHS.values() if path.execution == execution and path.float8 == float8]


def resolve_execution(execution: str, device: torch.device, float8: bool = False) -> str:
    """The `execution` option with "auto" resolved: "sparse" where some sparse path (of the weight's kind) runs on
    the device; else "simulate" on a CPU (the method's numerics: tests, quality studies) and "dense" on a GPU, where
    simulating would only make the model slower."""
    if execution != "auto":
        return execution
    if _sparse_runs_on(device, float8):
        return "sparse"
    return "dense" if device.type == "cuda" else "simulate"


def execution_warning(execution: str, device: torch.device, float8: bool = False) -> str | None:
    """What a user who asked for `execution` should hear where no sparse path (of the weight's kind) runs on the
    device, as every linear there then stays dense."""
    stays_dense = execution == "sparse" or execution == "auto" and device.type == "cuda"
    if not stays_dense or _sparse_runs_on(device, float8):
        return None
    return (f"no sparse path runs on {_device_name(device)}{' for float8 weights' if float8 else ''}: its linears "
            f"stay dense under execution={execution!r} (explain gives each layer's reason; execution='simulate' "
            "runs the method's numerics there, through dense GEMMs)")  # fmt: skip


def _sparse_runs_on(device: torch.device, float8: bool) -> bool:
    """Whether some sparse path (of the weight's kind) runs on the device."""
    return any(path.runs_on(device) for path in paths_for("sparse", float8))


def _device_name(device: torch.device) -> str:
    if device.type != "cuda" or not torch.cuda.is_available():
        return str(device)
    major, minor = torch.cuda.get_device_capability(device)
    return f"{torch.cuda.get_device_name(device)} (sm_{major}{minor})"


register_path(Simulate())
register_path(Cusparselt())
if planned_cusparselt_available():  # nvmath-python installed (lynx-compile[cuda])
    register_path(CusparseltPlanned())
register_path(Cutlass())  # says why not where nvcc, CUTLASS's headers (lynx-compile[cutlass]) or sm_90 are missing
register_path(SimulateFloat8())
register_path(CutlassFloat8())

__all__ = ["PATHS", "Measurement", "SparsePath", "Workload", "clear_measurements", "get_path", "measure", "measured",
           "execution_warning", "paths_for", "register_path", "resolve_execution"]  # fmt: skip

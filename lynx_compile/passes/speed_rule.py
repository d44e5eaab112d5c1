"""The speed rule: which sparse path a layer (or a sibling group) runs on, measured.

Every sparse path that can run the layer is asked why not or timed against dense for the layer's workload (its
shape, folded producer, correction and graph mode: `paths.measurements` keeps each measurement); the fastest path
that beats dense by `min_speedup` wins, else the layer stays dense with the closest measurement in its reason. A
folded producer that may cost more on load than x's round trip saves is measured both ways.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import torch

from ..config import LynxConfig
from ..folds import IDENTITY, describe, get_fold
from ..paths import SparsePath, Workload, measure, paths_for
from ..paths.base import Measurement
from ..plan import SparseLinearPlan
from .utils import LinearSite, PassContext, concrete_int

logger = logging.getLogger(__name__)


def plan_for(site: LinearSite, ctx: PassContext, path: SparsePath, params: dict | None = None) -> SparseLinearPlan:
    """The plan of the layer at `site` on `path` with the path's measured settings (`params`)."""
    fold = site.fold.spec if site.fold is not None else IDENTITY
    settings = tuple(sorted((params or {}).items()))
    return SparseLinearPlan(path.name, ctx.config.method, fold, path.row_multiple, settings)


def workload_of(site: LinearSite, ctx: PassContext, out_splits: tuple[int, ...] = (),
                written: bool = False) -> Workload:  # fmt: skip
    """What the speed rule times for the layer at `site` (or the sibling group it leads: `out_splits`)."""
    device = site.device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    fold, widths, rows = IDENTITY, (), ()
    if site.fold is not None:
        values = site.fold.values()
        fold, widths = site.fold.spec, tuple(int(value.shape[-1]) for value in values)
        rows = tuple(concrete_int(value.numel()) // max(width, 1) for value, width in zip(values, widths))
    return Workload(concrete_int(site.tokens), site.in_features, sum(out_splits) or site.out_features, site.dtype,
                    device, ctx.config.cuda_graphs, fold, widths, site.lora_rank, out_splits,
                    bool(out_splits) and ctx.config.pack_siblings and not site.float8, site.float8,
                    written, rows)  # fmt: skip


def _fastest(workload: Workload, ctx: PassContext) -> tuple[Measurement | None, SparsePath | None, str]:
    """(the best measurement, its path, why no path could run) over the sparse paths that can run the workload: of
    those that beat dense by min_speedup, the fastest with its norm scale applied (`Measurement.standalone_ms`);
    where none does, the one closest to it."""
    config = ctx.config
    unavailable, timed = [], []
    for path in paths_for("sparse", workload.float8):
        if config.sparse_paths and path.name not in config.sparse_paths:
            continue
        why = "runs no sibling groups" if workload.out_splits and not path.groups else None
        why = why or path.unavailable_reason(workload, config.method)
        if why is not None:
            unavailable.append((path.name, why))
            continue
        try:
            measured = measure(path, workload, config.policy.measurements if config.policy is not None else None)
        except Exception as error:  # a path that cannot time this layer does not run it (every rank alike)
            if config.strict:
                raise
            logger.warning("lynx: measuring %s for %s failed (%s: %s); the layer stays off this path", path.name,
                           workload.describe(), type(error).__name__, error)  # fmt: skip
            unavailable.append((path.name, f"measuring failed ({type(error).__name__}: {error})"))
            continue
        timed.append((measured, path))
    passing = [entry for entry in timed if entry[0].speedup >= config.min_speedup]
    best, best_path = (min(passing, key=lambda entry: entry[0].standalone_ms) if passing else
                       max(timed, key=lambda entry: entry[0].speedup, default=(None, None)))  # fmt: skip
    if len({why for _, why in unavailable}) == 1:  # one reason (one path, or all alike): no names needed
        return best, best_path, unavailable[0][1]
    return best, best_path, "; ".join(f"{name}: {why}" for name, why in unavailable) or _no_path(workload, config)


def _no_path(workload: Workload, config: LynxConfig) -> str:
    """Why no path was asked at all: sparse_paths allows none of this kind's (float8 or not), or none is registered."""
    kind = "torchao float8 layers" if workload.float8 else "16-bit layers"
    registered = [path.name for path in paths_for("sparse", workload.float8)]
    if registered and config.sparse_paths:
        return f"sparse_paths={list(config.sparse_paths)} allows no sparse path for {kind} ({', '.join(registered)})"
    return f"no sparse path for {kind} is registered"


def _conditions(measured: Measurement, site: LinearSite, ctx: PassContext, written: bool = False) -> str:
    """What a measurement was taken under, for reasons."""
    where = f"M={measured.tokens}, " + ("CUDA graphs" if ctx.config.cuda_graphs else
                                       "no CUDA graphs, host time included")  # fmt: skip
    if site.lora_rank:
        where += f", rank-{site.lora_rank} LoRA included"
    if site.fold is not None:
        where += f", input {describe(site.fold.spec)} " + ("written out first" if written else "pruned on load")
    return where


def _measured_plan(site: LinearSite, ctx: PassContext, out_splits: tuple[int, ...] = (), written: bool = False):
    """The speed rule for one layer, or for a sibling group led by `site`: (its plan, a reason naming the path and
    the measurement, the measurement) where the fastest path beats dense by min_speedup, else (None, why not, the
    closest measurement or None). `written`: x's folded producer runs before the op instead (the plan reads x)."""
    best, path, unavailable = _fastest(workload_of(site, ctx, out_splits, written), ctx)
    if best is None:
        return None, unavailable, None
    where = _conditions(best, site, ctx, written)
    if best.speedup < ctx.config.min_speedup:
        why = f"sparse path measured {best.speedup:.2f}× dense ({where}) < min_speedup={ctx.config.min_speedup}"
        return None, why, best
    params = dict(best.params)
    plan = plan_for(site, ctx, path, params)
    if written:
        plan = replace(plan, fold=IDENTITY)
    return plan, f"{path.describe(params)}, measured {best.speedup:.2f}× dense ({where})", best


def best_way(site: LinearSite, ctx: PassContext, out_splits: tuple[int, ...] = ()):
    """`_measured_plan` for a layer or a sibling group led by `site`. With a folded producer that can cost more on
    load than x's round trip saves — any on a float8 layer (a GELU in the FP8 compressor), a norm on any — it is
    measured both ways, the producer applied on load or written out first, and the faster passing way is taken."""
    options = [_measured_plan(site, ctx, out_splits)]
    if site.fold is not None and (site.float8 or get_fold(site.fold.spec.kind).measured_both_ways):
        options.append(_measured_plan(site, ctx, out_splits, written=True))
    passing = [option for option in options if option[0] is not None]
    if passing:
        return min(passing, key=lambda option: option[2].standalone_ms)
    measured = [option for option in options if option[2] is not None]
    return max(measured, key=lambda option: option[2].speedup) if measured else options[0]

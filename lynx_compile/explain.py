"""`explain(model, *args, options=None, **kwargs) -> Report`: what lynx would do to a model, and why.

It captures the model with Dynamo, runs the lynx passes exactly as the backend does, and runs the rewritten graph
eagerly (Inductor's code generation is skipped: it changes speed, not decisions). It leaves the caller's compiled
models alone: it traces through a function of its own with a backend object of its own, so Dynamo never serves it a
graph compiled before (and it always reports), and afterwards it drops the compiled code its trace left behind, so
nothing the caller compiled recompiles or counts it against a recompile limit. On frames the caller's code shares
with explain's (those after a graph break inside the model) explain's code is counted apart (torch.compile's
``isolate_recompiles``); with a torch without it (2.11) explain resets such a frame once its own code has taken half
of the frame's recompile limit, and the caller's code there compiles again on its next call. The report lists every
matched linear with its sizes, decision, reason and share of linear FLOPs, plus each FX graph before and after the
rewrite.

A module compiled in place (``model.compile()``) runs its compiled call and would give Dynamo nothing to capture,
so explain traces its own `_call_impl` (hooks included) instead; `torch.compile(model)`'s wrapper is explained as the
module it wraps, so that layers keep their names (``fc1``, not ``_orig_mod.fc1``) and options name them alike. A
model compiled block by block with `lynx_compile.compile_repeated_blocks` is explained block by block the same way,
with explain's options: one row per layer per block instance, under its full name, and the graphs each block class
took (`Report.regions`). Any other model, diffusers' regionally compiled ones included, is traced whole: the
decisions are the same, by full name.

Lynx options go in ``options=``. ``fullgraph=`` is torch.compile's: a model that compiles with ``fullgraph=True`` may
take other graphs without it (Dynamo runs a frame it cannot trace whole eagerly: Mochi's attention processor), so
explain it as it is compiled. Where the model's forward has a parameter of either name, ``options=`` (or
``fullgraph=``) is the model's, and explain's go in ``lynx_options=`` (``lynx_fullgraph=``), always accepted. The
model is registered with lynx (`regions`): a graph Dynamo roots at one of its blocks is named in full. The report
lists the model's linear modules that no compiled graph holds (`Report.outside`): they ran eagerly, dense, or were
not called.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import logging
import types
import weakref
from typing import Any, Iterator

import torch

from .backend import lynx_backend
from .checks import check_bool
from .config import LynxConfig, parse_options
from .messages import some_names
from .regional import ISOLATED, compiled_privately, compiled_regionally
from .regions import register_model
from .report import Report, collect_reports

logger = logging.getLogger(__name__)


def explain(model: torch.nn.Module, *args: Any, options: dict[str, Any] | LynxConfig | None = None,
            lynx_options: dict[str, Any] | LynxConfig | None = None, fullgraph: bool | None = None,
            lynx_fullgraph: bool | None = None, **kwargs: Any) -> Report:  # fmt: skip
    """Trace `model(*args, **kwargs)` under lynx and return the per-linear decisions.

    >>> report = lynx_compile.explain(transformer, **inputs, options={"exclude": ["*.proj_out"]})
    >>> print(report)          # aligned table + summary line
    >>> report.to_json()       # the same, machine-readable, with the graphs before and after
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"lynx.explain needs the model as an nn.Module (not what torch.compile returns for a "
                        f"function), got {type(model).__name__}")  # fmt: skip
    if isinstance(model, torch._dynamo.eval_frame.OptimizedModule):
        model = model._orig_mod
    parameters = _forward_parameters(model)
    options = _explains_own("options", options, lynx_options, parameters, kwargs)
    fullgraph = _explains_own("fullgraph", fullgraph, lynx_fullgraph, parameters, kwargs)
    fullgraph = False if fullgraph is None else check_bool("fullgraph", fullgraph)
    config = dataclasses.replace(parse_options(options), compiler="eager")
    compiled_in_place = getattr(model, "_compiled_call_impl", None) is not None
    backend = functools.partial(lynx_backend, options=config)  # equal to no other backend: never a cache hit
    register_model(model)
    with _private_compile_state(), collect_reports() as report, torch.no_grad():
        if compiled_regionally(model) is not None:
            with compiled_privately(model, config):
                model(*args, **kwargs)
        else:
            target = model._call_impl if compiled_in_place else model
            torch.compile(_trace, backend=backend, fullgraph=fullgraph, **ISOLATED)(target, *args, **kwargs)
    if not report.graphs:
        stance = getattr(getattr(torch._dynamo.eval_frame, "_stance", None), "stance", "default")
        why = (f"torch.compiler.set_stance({stance!r}) is in force, under which torch compiles nothing (not even "
               "a first time): call explain outside it" if stance != "default" else
               "compiled or disabled elsewhere, or not traceable")  # fmt: skip
        raise RuntimeError("lynx.explain: Dynamo captured no graph from this call: the forward ran without Dynamo "
                           f"tracing any tensor operation ({why})")
    report.note_linears_outside(model)
    return report


def _explains_own(name: str, value: Any, lynx_value: Any, parameters: set[str], kwargs: dict[str, Any]) -> Any:
    """explain's own `name` (`options`, `fullgraph`): `value`, unless the model's forward has a parameter of that
    name or `lynx_<name>` is given; then `value` is the model's argument (put in `kwargs` where given) and
    `lynx_value` explain's."""
    if lynx_value is None and name not in parameters:
        return value
    if value is not None:
        kwargs[name] = value
    return lynx_value


def _forward_parameters(model: torch.nn.Module) -> set[str]:
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):  # no signature to read (a C function)
        return set()


def _trace(self: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
    """What explain compiles: its compiled code lives on this function's code object, not on the model's. The
    argument is named `self` so that Dynamo's sources read L['self']... as for a compiled module (layer names)."""
    return self(*args, **kwargs)


# Without ISOLATED: how many of its frame's cache entries explain has added since the frame was last reset, for each
# frame it shares with the caller's compiled code
_entries_taken: weakref.WeakKeyDictionary[types.CodeType, int] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def _private_compile_state() -> Iterator[None]:
    """Undo what compiling `_trace` adds to Dynamo's process-wide state: the cache entries on `_trace` and on every
    code object that held none before (a model's inner frames, after a graph break, first met now or by an earlier
    explain), and the backends it registered. Code holding the caller's entries keeps them; explain's entries there
    are guarded by its own backend object, so they never run for the caller's compiled models, and are counted
    apart where torch has `isolate_recompiles` (`ISOLATED`). Such a frame is reset (the caller's code there compiles
    again on its next call) only once explain's entries would cost the caller: without `ISOLATED`, when they have
    taken half the frame's recompile limit or the limit is reached (and, before explain traces, where the caller has
    reached it: Dynamo then runs any code of the frame whose guards pass, whichever backend compiled it); with it,
    when the frame's entries near Dynamo's `accumulated_recompile_limit`, which counts every bucket. Not after every
    explain: that recompile may take minutes where hooks break the graph at every layer."""
    from torch._dynamo.convert_frame import input_codes
    from torch._dynamo.eval_frame import cached_backends, reset_code

    backends_before = set(cached_backends)
    entries_before = {id(code): _entries(code) for code in _live(input_codes.seen)}
    spent = [] if ISOLATED else [code for code in _live(input_codes.seen)
                                 if entries_before[id(code)] >= torch._dynamo.config.recompile_limit]  # fmt: skip
    for code in spent:
        reset_code(code)
        entries_before[id(code)] = 0
    shared = [code.co_name for code in spent]
    try:
        yield
    finally:
        for code in _live(input_codes.seen):
            before, total = entries_before.get(id(code)), _entries(code)
            gained = total - (before or 0)
            if code is _trace.__code__ or before is None or before == 0 and gained > 0:
                reset_code(code)
            elif gained > 0 and _explains_entries_cost_the_caller(code, gained, total):
                reset_code(code)
                shared.append(code.co_name)
        if shared:
            logger.info("lynx.explain: reset the compiled code of %d frame(s) it shared with compiled models (%s), "
                        "where its own would have cost them compiles: they compile again on their next call",
                        len(shared), some_names(shared))  # fmt: skip
        for key in set(cached_backends) - backends_before:
            del cached_backends[key]


def _explains_entries_cost_the_caller(code: types.CodeType, gained: int, total: int) -> bool:
    """Whether the `gained` entries explain left on a frame it shares with the caller (`total` now) warrant a reset."""
    config = torch._dynamo.config
    if ISOLATED:
        return total >= config.accumulated_recompile_limit // 2
    taken = _entries_taken[code] = _entries_taken.get(code, 0) + gained
    if taken >= max(1, config.recompile_limit // 2) or total >= config.recompile_limit:
        del _entries_taken[code]
        return True
    return False


def _entries(code: types.CodeType) -> int:
    """The frame's cache entries, every `isolate_recompiles` bucket's."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    return len(_debug_get_cache_entry_list(code))


def _live(code_refs: Any) -> list[types.CodeType]:
    return [code for code in (ref() for ref in list(code_refs)) if code is not None]

"""`compile_repeated_blocks(model, options=...)`: regional compilation in which every instance runs as decided.

diffusers compiles a transformer block by block (`ModelMixin.compile_repeated_blocks`: ``block.compile(...)`` on each
instance of the classes in ``_repeated_blocks``): Dynamo traces one instance of a class and every other instance runs
that graph with its own parameters as inputs. That is what makes compiling FLUX take seconds instead of minutes, and
why lynx cannot decide per instance there: one graph, one set of decisions. A calibrated policy differs per instance
(measuring each layer is its point), and so may include/exclude.

Here the instances of a class are grouped by their *decision pattern* — what the options say about each of their
layers before shapes are known (`LynxConfig.name_variant`) — and each pattern is compiled through a function with a
code object of its own: instances with one pattern share that function, hence one graph; distinct patterns have
distinct Dynamo caches. So there is no guard on a per-instance attribute, a new pattern is the first compile of its
own code rather than a recompile (Dynamo's recompile limit never counts patterns), and inside a graph there is no
run-time choice at all: CUDA-graph safe, no host sync. Each pattern's backend is told the instances it serves
(`LynxConfig.region`); `place_linears` names their layers in full.

Alternatives weighed. (1) One graph computing both variants of a differing layer, selected per instance by an input
tensor: one compile, but every such layer runs a dense *and* a sparse GEMM (on the sparse path they take different
operands, so there is no cheaper select): on FLUX's qkv shape 0.336 + 0.272 ms against 0.336 dense (DESIGN.md §6),
1.8× dense on exactly the layers meant to get faster. (2) A per-instance attribute read in traced code, so that
Dynamo guards on it: the patterns become recompiles of one code object, counted against Dynamo's recompile limit
(8 by default, shared by all graphs of that code), past which it silently runs eagerly. Distinct code per pattern
has neither cost; its price is one compile per pattern — at most one per instance, as whole-model compilation pays —
and `explain` shows the count (`Report.regions`).

Linears outside the blocks (FLUX's ``x_embedder``, ``context_embedder``, ``proj_out``) run eagerly under diffusers'
regional compilation, so dense whatever a policy says. Here each one the options may sparsify is compiled on its own
as well, so that regional and whole-model compilation decide every layer alike; those the options decide alike
share one set of options (code below a graph break, which all regions share, keeps one Dynamo cache entry per set).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import inspect
import logging
import re
import types
import weakref
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch._dynamo.backends.registry import lookup_backend

from .checks import check_module, names_of
from .config import LynxConfig, parse_options
from .messages import some_names
from .regions import RegionSpec, inside, linear_name, parameter_kind, qualified, register_model
from .report import has_hooks
from .steps import StepSchedule, by_step

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegionalCompile:
    """How `compile_repeated_blocks` compiled a model, so that `explain` can do it again with its options."""

    blocks: tuple[str, ...]
    compile_kwargs: dict[str, Any]
    compiled: tuple[str, ...]  # the modules it compiled, by qualified name


OUTSIDE = "linears outside the blocks"  # the region label of each linear compiled on its own

# Each torch.compile call's cache entries, and their count against Dynamo's recompile limit, kept apart from other
# calls' on the code both compile (where torch has it: 2.13 does, 2.11 does not). The frames after a graph break
# inside a block are compiled once per region (decision pattern and step variant): counted together they reach the
# limit, past which Dynamo runs any code of the frame whose guards pass, another region's decisions included.
ISOLATED = {"isolate_recompiles": True} if "isolate_recompiles" in inspect.signature(torch.compile).parameters else {}

_compiled: weakref.WeakKeyDictionary[torch.nn.Module, RegionalCompile] = weakref.WeakKeyDictionary()


def compile_repeated_blocks(model: torch.nn.Module, *, options: dict[str, Any] | LynxConfig | None = None,
                            mode: str | None = None, blocks: list[str] | tuple[str, ...] | None = None,
                            steps: StepSchedule | None = None, **compile_kwargs: Any) -> torch.nn.Module:  # fmt: skip
    """Compile `model` in place, block by block, with the lynx backend; every layer of every instance is decided
    by its full name (``single_transformer_blocks.3.proj_out``), as whole-model compilation decides it.

    >>> lynx_compile.compile_repeated_blocks(transformer, options={"policy": policy}, mode="reduce-overhead")

    `options` are lynx's (as ``torch.compile(..., backend="lynx", options=...)`` takes them), `mode` torch.compile's
    (both may be given here), `blocks` the class names to compile on their own (default: the model's diffusers
    ``_repeated_blocks``), `steps` a `StepSchedule` (sparse at its steps, dense at the others: each region is then
    compiled in both variants), and `compile_kwargs` the rest of torch.compile's arguments (``fullgraph``,
    ``dynamic``). Returns `model`.
    """
    check_module("compile_repeated_blocks", model)
    if "backend" in compile_kwargs:  # `options` is a parameter of its own
        raise TypeError("compile_repeated_blocks: the backend is lynx; pass lynx options as options=")
    config = parse_options(options, mode)
    _check_compile_kwargs(compile_kwargs)
    if steps is not None and not isinstance(steps, StepSchedule):
        raise TypeError(f"compile_repeated_blocks: steps must be a lynx_compile.StepSchedule, got {steps!r}")
    names = names_of(blocks) if blocks is not None else tuple(getattr(model, "_repeated_blocks", None) or ())
    if not names or not all(isinstance(name, str) for name in names):
        repeated = _repeated_in_lists(model)
        found = f" (its module lists repeat {some_names(repeated)})" if repeated else ""
        raise ValueError(f"compile_repeated_blocks: {type(model).__name__} names no repeated blocks "
                         f"(diffusers' _repeated_blocks); pass blocks=[class names]{found}")  # fmt: skip
    return _compile_regions(model, config, names, steps, compile_kwargs, backend="lynx")


def _compile_regions(model: torch.nn.Module, config: LynxConfig, names: tuple[str, ...], steps: StepSchedule | None,
                     compile_kwargs: dict[str, Any], backend: Any) -> torch.nn.Module:  # fmt: skip
    """`compile_repeated_blocks` once its arguments are checked: each region compiled by torch.compile with `backend`
    ("lynx", or a backend object of explain's own, which no graph compiled for the caller's models can match)."""
    instances = _outermost(model, names)
    if not instances:
        raise ValueError(f"compile_repeated_blocks: no module of class {', '.join(names)} in {type(model).__name__}")
    register_model(model)
    compile_kwargs = {**ISOLATED, **compile_kwargs}
    earlier = _compiled.get(model)
    for path in earlier.compiled if earlier is not None else ():  # options that compile fewer linears: not those
        model.get_submodule(path)._compiled_call_impl = None
    patterns: dict[tuple, list[tuple[str, torch.nn.Module]]] = {}
    for path, module in instances:
        patterns.setdefault(_pattern(module, path, config), []).append((path, module))
    regions = [(type(members[0][1]).__name__, members) for members in patterns.values()]
    # Linears outside the blocks: each runs code of its own, but those the options decide alike share one set of
    # options. Below a graph break inside a region (a diffusers hook around each linear: layerwise casting,
    # leaf-level offloading) Dynamo compiles shared code (the hook, `nn.Linear.forward`), one cache entry per
    # distinct set of options: one per linear ran FLUX's shared frames past Dynamo's recompile limit, dense after.
    alike: dict[tuple, list[tuple[str, torch.nn.Module]]] = {}
    for path, module in _linears_outside(model, instances, config):
        alike.setdefault(config.name_variant(path), []).append((path, module))
    for label, members in [*regions, *((OUTSIDE, members) for members in alike.values())]:
        one_graph = label != OUTSIDE
        region = RegionSpec(label, tuple(path for path, _ in members), one_graph)
        region_config = dataclasses.replace(config, region=region)
        for first in members[:1] if one_graph else members:
            run = torch.compile(_region_function(*first), backend=backend, options=region_config, **compile_kwargs)
            if steps is not None:  # the dense variant through code of its own: switching steps never recompiles
                # labelled apart, so that a report over sparse and dense steps holds each variant's rows
                dense_region = dataclasses.replace(region, label=f"{label} (dense steps)")
                dense_config = dataclasses.replace(region_config, execution="dense", region=dense_region)
                dense = torch.compile(_region_function(*first, variant="dense"), backend=backend, options=dense_config,
                                      **compile_kwargs)  # fmt: skip
            for _, module in members if one_graph else [first]:
                module._compiled_call_impl = (functools.partial(run, module) if steps is None else
                                              functools.partial(by_step, steps, run, dense, module))  # fmt: skip
    regions += [(OUTSIDE, [member]) for members in alike.values() for member in members]
    _compiled[model] = RegionalCompile(names, dict(compile_kwargs), tuple(path for _, members in regions
                                                                          for path, _ in members))  # fmt: skip
    _log_regions(model, regions, config, variants=1 if steps is None else 2)
    return model


def _check_compile_kwargs(compile_kwargs: dict[str, Any]) -> None:
    """torch.compile's own checks of its arguments, before an earlier compilation of the model is undone: a typo
    (``fulgraph=``) must not leave the model uncompiled. Wrapping a function compiles nothing."""
    try:
        torch.compile(_nothing, backend="eager", **compile_kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as error:
        raise TypeError(f"compile_repeated_blocks: torch.compile refuses {compile_kwargs}: {error}") from None


def _nothing() -> None:
    pass


def compiled_regionally(model: torch.nn.Module) -> RegionalCompile | None:
    """How `compile_repeated_blocks` compiled `model`, or None if it did not."""
    return _compiled.get(model)


@contextlib.contextmanager
def compiled_privately(model: torch.nn.Module, config: LynxConfig) -> Iterator[None]:
    """`model` compiled again the way `compile_repeated_blocks` compiled it, with `config`, inside the `with`; then
    as it was (its compiled functions restored; their Dynamo caches are the caller's to reset). The regions are
    compiled by a backend object of their own: the caller's compiled code on the frames both share (after a graph
    break inside a block) is never served to them, even for equal options."""
    record = _compiled[model]
    saved = [(module, module.__dict__.get("_compiled_call_impl")) for module in model.modules()]
    private_backend = functools.partial(lookup_backend("lynx"))  # equal to no other backend object
    try:
        _compile_regions(model, config, record.blocks, None, record.compile_kwargs, backend=private_backend)
        yield
    finally:
        for module, call in saved:
            module._compiled_call_impl = call
        _compiled[model] = record


def _region_call(module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
    """What a region's compiled function runs: the module's own call, hooks included. `_call_impl`, not `module()`:
    that goes through `_compiled_call_impl`, which is this function."""
    return module._call_impl(*args, **kwargs)


def _region_function(path: str, module: torch.nn.Module, variant: str = "") -> types.FunctionType:
    """`_region_call` with a code object of its own: Dynamo keeps one cache per code object. Its name says which
    module it compiles first, and the shapes of its parameters: Dynamo keeps what it learnt about dynamic shapes by
    file, line and name (`torch._dynamo.pgo.CodeId`), so a region must not share a name with one of other shapes
    (and may keep its name from run to run)."""
    shapes = hashlib.sha1(repr(_structure(module)).encode()).hexdigest()[:8]
    name = re.sub(r"\W", "_", f"lynx_{type(module).__name__}_{path}_{shapes}" + (f"_{variant}" if variant else ""))
    code = _region_call.__code__.replace(co_name=name)
    if hasattr(code, "co_qualname"):  # Python >= 3.11
        code = code.replace(co_qualname=name)
    return types.FunctionType(code, _region_call.__globals__, name)


def _outermost(model: torch.nn.Module, classes: tuple[str, ...]) -> list[tuple[str, torch.nn.Module]]:
    """Every module of the named classes not inside another one, in model order (an inner one runs in its outer
    one's graph)."""
    found: list[tuple[str, torch.nn.Module]] = []
    for path, module in model.named_modules():
        if type(module).__name__ in classes and not any(inside(path, outer) for outer, _ in found):
            found.append((path, module))
    return found


def _repeated_in_lists(model: torch.nn.Module) -> list[str]:
    """The block classes an `nn.ModuleList` of the model holds several instances of, and nothing else (DiT's and SD3's
    blocks, which diffusers does not name in their `_repeated_blocks`), as "Class ×count": what `blocks=` could
    name. Lists of leaves (an attention's `to_out`) are no blocks."""
    counts: dict[str, int] = {}
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 1 and len({type(child) for child in module}) == 1:
            if any(True for _ in module[0].children()):
                counts[type(module[0]).__name__] = counts.get(type(module[0]).__name__, 0) + len(module)
    return [f"{name} ×{count}" for name, count in counts.items()]


def _pattern(module: torch.nn.Module, path: str, config: LynxConfig) -> tuple:
    """What makes instances share a graph: their class, parameter shapes, and each layer's decision variant."""
    layers = sorted({linear_name(name) for name, _ in module.named_parameters()})
    return type(module), _structure(module), tuple(config.name_variant(qualified(path, layer)) for layer in layers)


def _structure(module: torch.nn.Module) -> tuple:
    return tuple((name, tuple(p.shape), str(p.dtype), str(p.device), parameter_kind(p))
                 for name, p in module.named_parameters())  # fmt: skip


def _linears_outside(model: torch.nn.Module, instances: list[tuple[str, torch.nn.Module]],
                     config: LynxConfig) -> list[tuple[str, torch.nn.Module]]:  # fmt: skip
    """The `nn.Linear`s outside the blocks that the options may sparsify (by name and by size; their token counts
    are known only when they run)."""
    if config.execution == "dense":
        return []
    return [(path, module) for path, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and not any(inside(path, outer) for outer, _ in instances)
            and config.name_decision(path)[0] is None and module.in_features % config.m == 0
            and min(module.in_features, module.out_features) >= config.min_features]  # fmt: skip


def _log_regions(model: torch.nn.Module, regions: list[tuple[str, list[tuple[str, torch.nn.Module]]]],
                 config: LynxConfig, variants: int) -> None:  # fmt: skip
    by_class: dict[str, list[int]] = {}
    for label, members in regions:
        by_class.setdefault(label, []).append(len(members))
    for label, sizes in by_class.items():
        logger.info("lynx: %s: %d instance(s) in %d decision pattern(s), one graph each", label, sum(sizes),
                    len(sizes))  # fmt: skip
    compiles, limit = len(regions) * variants, torch._dynamo.config.recompile_limit
    if not ISOLATED and compiles >= limit and _hooked(model):
        logger.warning("lynx: %d compiled regions%s; where a hook breaks the graph (diffusers' layerwise casting or "
                       "leaf-level offloading), the frames after the break are compiled once per region, and "
                       "this torch (no isolate_recompiles) counts them against one recompile limit (%d), past which "
                       "Dynamo runs any code of such a frame whose guards pass, another region's decisions included. "
                       "Raise torch._dynamo.config.recompile_limit above %d (times the token counts called), or use "
                       "torch >= 2.13", compiles, " (sparse and dense step variants)" if variants > 1 else "", limit,
                       compiles)  # fmt: skip
    if config.policy is not None:
        layers = {linear_name(name) for name, _ in model.named_parameters()}
        stale = config.policy.names_missing_from(layers)
        if stale:
            logger.warning("lynx: the policy names %d layer(s) this model does not have (a stale policy, or another "
                           "model): %s", len(stale), some_names(stale))


def _hooked(model: torch.nn.Module) -> bool:
    """Whether a module of the model has hooks: what most often breaks a block's graph."""
    return any(has_hooks(module) for module in model.modules())

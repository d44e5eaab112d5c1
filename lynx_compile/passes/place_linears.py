"""Place each linear in the model: its full qualified name, and its name in every module instance the graph serves.

A graph Dynamo compiles for a block's own frame (diffusers' regional compilation, lynx's `compile_repeated_blocks`,
a graph break inside a block) names its linears relative to the block (`names.py`): ``proj_out``. Here the sites
reached through one root module are placed in a model lynx knows (`lynx_compile.regions`): their names become full
(``single_transformer_blocks.0.proj_out``), and each site lists its name in every instance the graph serves, which
the decide pass decides and the report shows one by one. A whole-model graph is placed at the model itself and
keeps its names.

The model whose call is running is known too (`regions.model_on_stack`), and tried first unless a model given to
lynx holds it: the one given to ``torch.compile``, or the diffusers model whose blocks diffusers'
`compile_repeated_blocks` compiled; so a block's graph — of that regional compilation, or rooted at the block by a
graph break inside it — is placed in it.

A root that cannot be placed keeps names relative to it — unless the options name layers of a model and the root is
evidently a block of one (`regions.RegionError`): matching then would be a guess. Last, names that still collide
(modules reached from different roots that could not be placed) say no layer, and those layers stay dense.
"""

from __future__ import annotations

import logging

import torch
import torch.fx

from ..messages import Once
from ..regions import (
    RegionError, frame_object, frame_variable, model_on_stack, place, repeated_block_classes, unregistered,
)  # fmt: skip
from .utils import LinearSite, PassContext, fake_value

logger = logging.getLogger(__name__)


def place_linears(gm: torch.fx.GraphModule, ctx: PassContext) -> torch.fx.GraphModule:
    """Give every site its full name and its names in each instance the graph serves (the graph is unchanged)."""
    policy_model = ctx.config.policy.model_class if ctx.config.policy is not None else ""
    model = unregistered(model_on_stack(policy_model)) if ctx.config.region is None else None
    by_root: dict[str, list[LinearSite]] = {}
    for site in ctx.sites:
        if site.name_problem is None and site.weight_name is not None:
            by_root.setdefault(site.weight_name.root, []).append(site)
    roots: dict[int, str] = {}  # site → what its name is relative to
    named_in: list[torch.nn.Module] = []  # the modules the sites' names are relative to
    for root, sites in by_root.items():
        source = sites[0].weight_name.root_source
        # The frame's own module (an argument: L['self']) may be any instance of its class when Dynamo reuses the
        # graph; a module reached through a global or a closure is guarded as that one object.
        frame_root = (frame_variable(source) or ("",))[0] == "f_locals"
        shapes = {site.weight_name.qualified: tuple(fake_value(site.weight).shape) for site in sites}
        placement = place([(site.weight_name.parameter, site.weight_name.qualified) for site in sites],
                          ctx.config.region, class_wide=frame_root, first=model,
                          shapes={name: shape for name, shape in shapes.items()
                                  if all(isinstance(size, int) for size in shape)})  # fmt: skip
        if placement is None:
            _check_unplaced(root, sites, ctx)
            _name_aliases_first(sites, frame_object(source))
            roots.update((id(site), root) for site in sites)
            named_in.append(frame_object(source))
            continue
        named_in.append(placement.model_ref() if placement.model_ref is not None else None)
        for site in sites:
            relative = site.name
            site.name = placement.name(relative)
            if placement.regional:
                site.instances, site.placement = placement.names(relative), placement
            roots[id(site)] = f"the model {placement.model}"
        if not placement.regional:
            _name_aliases_first(sites, placement.model_ref())
        if placement.regional and frame_root and ctx.placement is None:
            ctx.placement = placement
    _flag_ambiguous_names(ctx.sites, roots)
    _warn_about_unmatched_globs(ctx, named_in)
    if ctx.config.region is None:
        _warn_about_inlined_regions(named_in)
    if ctx.placement is not None:
        logger.debug("lynx: graph of %s placed at %s, serving %d instance(s)", ctx.placement.label,
                     ctx.placement.path, len(ctx.placement.instances))  # fmt: skip
    return gm


def _name_aliases_first(sites: list[LinearSite], model: object) -> None:
    """A module registered under several names (``self.a = self.b = linear``) takes the first, as `named_modules()`
    and `calibrate` name it, whichever the forward reached it by; so globs and policies see one name for it. (Only
    the same module: a weight tied between two modules keeps each module's own name.)"""
    if not isinstance(model, torch.nn.Module):
        return
    first_name: dict[int, str] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        first_name.setdefault(id(module), name)
    for site in sites:
        try:
            module = model.get_submodule(site.name)
        except AttributeError:  # a raw parameter's name, not a module's
            continue
        site.name = first_name.get(id(module), site.name)


def _check_unplaced(root: str, sites: list[LinearSite], ctx: PassContext) -> None:
    """Refuse to match names relative to a root that is evidently not the model the options name layers of."""
    config = ctx.config
    example = ", ".join(repr(site.name) for site in sites[:3])
    if config.region is not None:
        raise RegionError(f"lynx: a graph compiled for {config.region.label} reaches {example} through {root}, "
                          "which lynx cannot find in the model lynx_compile.compile_repeated_blocks was given")
    if not config.selects_by_name:
        return  # relative names only label the report
    module = frame_object(sites[0].weight_name.root_source)
    if not isinstance(module, torch.nn.Module):
        return
    kind = type(module).__name__
    advice = ("compile with lynx_compile.compile_repeated_blocks(model, options=...), which knows where each block "
              "is, or compile the whole model")
    calibrated_on = config.policy.model_class if config.policy is not None else ""
    # a model of another class whose layers the policy names as they are (a copy, a wrapper's twin) is matched as
    # explain matches it; a block's names relative to itself all in the policy would be a coincidence
    names_match = calibrated_on and all(config.policy.key_for(site.name) is not None for site in sites)
    if calibrated_on and calibrated_on not in {cls.__name__ for cls in type(module).__mro__} and not names_match:
        raise RegionError(f"lynx: this graph is rooted at a {kind}, the policy was calibrated on a {calibrated_on}: "
                          f"the graph's layer names ({example}) are relative to the {kind}, the policy's to the "
                          f"{calibrated_on}, so they cannot be matched. If the {kind} is a block compiled on its "
                          f"own (diffusers' compile_repeated_blocks), {advice}")  # fmt: skip
    if (config.include or config.exclude) and kind in repeated_block_classes():
        raise RegionError(f"lynx: this graph is a {kind} compiled on its own (regional compilation): its layer "
                          f"names ({example}) are relative to the block, so include/exclude globs over the model's "
                          f"names cannot be matched; {advice}")  # fmt: skip


_glob_warnings = Once()


def _warn_about_unmatched_globs(ctx: PassContext, named_in: list[object]) -> None:
    """Once per glob and module class: an include/exclude glob that names no module or parameter of the module(s)
    this graph's layer names are relative to — most often a full name given to a block compiled on its own
    (`block.compile(backend="lynx", options={"exclude": ["blocks.0.fc1"]})`, whose layers are `fc1`, `fc2`), which
    would otherwise be ignored without a word."""
    config = ctx.config
    modules = [module for module in named_in if isinstance(module, torch.nn.Module)]
    kind = ", ".join(sorted({type(module).__name__ for module in modules}))
    sites = {site.name for site in ctx.sites}
    unmatched = [(option, pattern) for option, patterns in (("include", config.include), ("exclude", config.exclude))
                 for pattern in patterns if (option, pattern, kind) not in _glob_warnings
                 and not any(config.matches(pattern, name) for name in sites)]  # fmt: skip
    if not modules or not unmatched:
        return  # the model's other names are walked only for globs this graph's layers leave unmatched
    names = {name for module in modules for name, _ in (*module.named_modules(), *module.named_parameters())}
    for option, pattern in unmatched:
        if not any(config.matches(pattern, name) for name in names) and _glob_warnings.first((option, pattern, kind)):
            example = ", ".join(repr(site.name) for site in ctx.sites[:3])
            logger.warning("lynx: %s pattern %r matches no layer of the %s compiled here (its layers are named like "
                           "%s: relative to the module torch.compile was given). A typo? Or a full name given to a "
                           "block compiled on its own: then compile the whole model, or use "
                           "lynx_compile.compile_repeated_blocks(model, options=...), which names layers in full",
                           option, pattern, kind, example)  # fmt: skip


_inlined_warnings = Once()


def _warn_about_inlined_regions(named_in: list[object]) -> None:
    """Once per model: a graph that traces through a model `lynx_compile.compile_repeated_blocks` compiled block by
    block. An enclosing torch.compile (of a wrapper doing CFG, of a pipeline's step) inlines the blocks' code, so the
    options given to compile_repeated_blocks — exclude globs, a policy — no longer apply; this compile's do."""
    from ..regional import compiled_regionally  # the regional API imports what the passes do

    for module in (module for module in named_in if isinstance(module, torch.nn.Module)):
        for inner_name, inner in module.named_modules():
            if compiled_regionally(inner) is None or not _inlined_warnings.first(id(inner)):
                continue
            logger.warning("lynx: this graph traces through %s (%s), which lynx_compile.compile_repeated_blocks "
                           "compiled block by block: an enclosing torch.compile inlines its blocks, so the options "
                           "given to compile_repeated_blocks do not apply — this compile's do. Compile the blocks or "
                           "the whole, not both", type(inner).__name__, inner_name or "the model")  # fmt: skip


def _flag_ambiguous_names(sites: list[LinearSite], roots: dict[int, str]) -> None:
    """Where modules reached from different roots give one name, it would not say which layer it means, so neither
    has a name."""
    by_name: dict[str, set[str]] = {}
    for site in sites:
        if site.name_problem is None:
            by_name.setdefault(site.name, set()).add(roots.get(id(site), ""))
    for site in sites:
        if site.name_problem is None and len(by_name[site.name]) > 1:
            site.name_problem = (f"{site.name!r} names a linear under each of {', '.join(sorted(by_name[site.name]))}"
                                 " (modules reached from different roots)")

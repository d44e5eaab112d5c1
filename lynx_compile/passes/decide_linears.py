"""Decide per linear: sparse or dense, always with a reason a user can act on.

Rules, first match wins: name not recoverable (`names.py`); name excluded/not included; the policy;
execution="dense"; a tensor-subclass operand (a torchao float8 weight of a kind lynx's FP8 kernels do not take;
others); dtype; K % m; too few features; too few tokens. A graph that serves several block instances
(`place_linears`) decides each layer once, for all of them: their names must agree on the first rules (else a
`RegionError`); each instance then gets its own reason. Then the execution picks the sparse paths
(`lynx_compile.paths`): "simulate" takes the simulate path as it is; "sparse" asks every sparse path why it cannot
run the layer, measures the others against dense for the layer's shape (with its folded producer and correction,
`paths.measurements`), and takes the fastest if it beats dense by `min_speedup` (`speed_rule.py`). Before that,
siblings reading one x are measured as a group (`group_siblings`): one prune for all their GEMMs; a group that pays is
decided as one, the others fall back to their own decisions. A torchao float8 layer (`lynx_compile.float8`) is
offered only the float8 paths (`SparsePath.float8`), measured against rowwise FP8 dense (a group's x quantized once
for its members), and groups with float8 siblings only. A float8 layer with a folded producer, and any layer with a
folded norm, is also measured with the producer written out first, and keeps the faster way.

A symbolic token count (Dynamo made M dynamic, e.g. after a second resolution) is decided with a guard on
M ≥ min_tokens: Dynamo then recompiles if a call falls on the other side, and this graph's ops can be lowered with
their epilogues fused. The alternative, an opaque op that checks M at run time, kept every sparse layer's epilogue
out of Inductor's fusion: 0.85× dense end to end on Z-Image, whose repeated block sees three token counts
(benchmarks/RESULTS.md). A path that runs only some token counts (`row_multiple` > 1) still checks at run time.
"""

from __future__ import annotations

import logging

import torch
import torch.fx
from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols, statically_known_true
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from ..adapter_names import is_adapter_linear
from ..float8 import UNDER_AUTOCAST, float8_weight_reason, subclass_operand_reason
from ..folds import IDENTITY, describe
from ..kernels.nm_prune import SUPPORTED_DTYPES
from ..messages import Once, some_names
from ..paths import execution_warning, get_path, paths_for, resolve_execution
from ..regions import RegionError, warn_about_uncompiled_layers
from .group_siblings import SiblingGroup, sibling_groups
from .speed_rule import best_way, plan_for
from .utils import LinearSite, PassContext, fake_value

logger = logging.getLogger(__name__)


def _dense_reason(site: LinearSite, ctx: PassContext) -> str | None:
    config = ctx.config
    if site.name_problem is not None and config.selects_by_name:  # else the name only labels the report's row
        return f"qualified name not recoverable: {site.name_problem}"
    by_name, lora_rank = _by_name(site, ctx, site.name), config.name_decision(site.name)[1]
    if by_name is not None:
        return by_name
    if lora_rank:
        site.lora = config.policy.adapter_for(site.name)
        adapter_shape = (site.lora.b.shape[1], site.lora.a.shape[0])
        if adapter_shape != (site.in_features, site.out_features):
            site.lora = None
            return (f"policy: its LoRA adapter maps {adapter_shape[0]}→{adapter_shape[1]}, the layer "
                    f"{site.in_features}→{site.out_features}")
        if site.float8:
            site.lora = None
            return "policy: a LoRA correction, which float8 layers do not run yet"
    return _layer_reason(site, ctx)


def _by_name(site: LinearSite, ctx: PassContext, name: str) -> str | None:
    """Why include/exclude or the policy keep the layer called `name` dense. A layer the policy does not name
    (calibrate records `nn.Linear` modules, not one that calls `F.linear` on its weight times a scale, as WanAnimate's
    motion encoder does) that its form keeps dense anyway says so, rather than that the policy lacks it."""
    config = ctx.config
    reason = config.name_decision(name)[0]
    unnamed = config.policy is not None and config.name_rule(name) is None and config.policy.decision_for(name) is None
    return (_form_reason(site, ctx) or reason) if reason is not None and unnamed else reason


def _layer_reason(site: LinearSite, ctx: PassContext) -> str | None:
    """Why the layer's execution, dtypes or sizes keep it dense: the same for every instance a graph serves."""
    return _form_reason(site, ctx) or _tokens_reason(site, ctx)


def _form_reason(site: LinearSite, ctx: PassContext) -> str | None:
    """Why the layer's execution, weight, dtypes or features keep it dense, whatever its token count (no guard)."""
    config = ctx.config
    if site.weight_view is not None:
        return (f"its weight is the parameter put through {site.weight_view}, not as stored: lynx rewrites linears "
                f"over a module's own weight")  # fmt: skip
    if config.execution == "dense":
        return "execution='dense'"
    if site.weights_only:
        return ("its input is made of weights and constants alone, not of the model's inputs (a constant such as "
                "a zero timestep's embedding, or a weight computed at run time such as peft's DoRA norm): no "
                "activation to prune")  # fmt: skip
    if site.float8:  # torchao's float8 weight: lynx's float8 op takes its inner tensors
        why = float8_weight_reason(fake_value(site.weight))
        if why is not None:
            return why
        if site.autocast is not None:
            return UNDER_AUTOCAST
    operands = (fake_value(site.x),) if site.float8 else (fake_value(site.weight), fake_value(site.x))
    subclass = next((value for value in operands if is_traceable_wrapper_subclass(value)), None)
    if subclass is not None:  # its own kernels; lynx's op would not reach them
        return subclass_operand_reason(subclass)
    if site.dtype not in SUPPORTED_DTYPES:
        return f"dtype {site.dtype} unsupported"
    input_dtype, weight_dtype = fake_value(site.x).dtype, fake_value(site.weight).dtype
    if site.autocast is None and input_dtype != weight_dtype:  # under autocast the op casts both, as F.linear does
        return f"input dtype {input_dtype} != weight dtype {weight_dtype}"
    bias_reason = _bias_reason(site)
    if bias_reason is not None:
        return bias_reason
    if site.in_features % config.m:
        return f"K={site.in_features} not a multiple of m={config.m}"
    if min(site.in_features, site.out_features) < config.min_features:
        return f"features K={site.in_features}, N={site.out_features} < min_features={config.min_features}"
    return None


def _tokens_reason(site: LinearSite, ctx: PassContext) -> str | None:
    config = ctx.config
    if isinstance(site.tokens, torch.SymInt) and free_unbacked_symbols(site.tokens):
        # data-dependent M (a routed expert's tokens, x[mask]): no guard can be put on it, and no size to measure
        return (f"tokens M={site.tokens} data-dependent (an unbacked size: routed by the data), not guarded "
                f"against min_tokens={config.min_tokens}")  # fmt: skip
    if not bool(site.tokens >= config.min_tokens):  # a symbolic M: a guard, on whichever side this call lies
        guarded = " (guarded: a larger M recompiles)" if isinstance(site.tokens, torch.SymInt) else ""
        return f"tokens M={site.tokens} < min_tokens={config.min_tokens}{guarded}"
    return None


def _bias_reason(site: LinearSite) -> str | None:
    """Why the bias keeps the layer dense: the op adds the bias to the output's rows flattened to (M, N), in the
    layer's dtype — F.linear's result for a bias of one value per output feature, or of one row per token where
    the input is 2-D. Any other bias (one that varies along a ≥ 3-D input's leading dimensions, or has more
    dimensions than the rows: F.linear broadcasts it over the output as shaped), or one of another dtype (an error
    in F.linear, outside autocast), is left to the dense linear."""
    bias = fake_value(site.bias) if site.bias is not None else None
    if not isinstance(bias, torch.Tensor):
        return None
    if site.autocast is None and bias.dtype != site.dtype:
        return f"bias dtype {bias.dtype} != {site.dtype}"
    rows = site.form == "addmm" or fake_value(site.x).dim() <= 2  # the op's (M, N) rows are the output's own
    if bias.dim() > 2 or (bias.dim() == 2 and not rows and not statically_known_true(bias.shape[0] == 1)):
        return (f"bias of shape {tuple(bias.shape)}: not one value per output feature, which the op adds to every "
                f"token's row")  # fmt: skip
    return None


def _choose_sparse_path(site: LinearSite, ctx: PassContext) -> str | None:
    """For execution="sparse": set the plan and the reason and return None, or return why the layer stays dense."""
    plan, reason, _ = best_way(site, ctx)
    if plan is None:
        return reason
    if plan.fold == IDENTITY:
        site.fold = None  # the producer stays in the graph, as Inductor compiles it; the op reads x
    site.plan, site.reason = plan, reason
    return None


def _decide_group(group: SiblingGroup, ctx: PassContext) -> bool:
    """Measure siblings as one unit; where it pays, decide all of them sparse with one plan and say so."""
    plan, reason, _ = best_way(group.sites[0], ctx, group.out_splits)
    if plan is None:
        logger.debug("lynx: sibling group %s stays apart (%s)", group.names, reason)
        return False
    prefix = _common_prefix(group.names)
    members = ", ".join(name[len(prefix):] for name in group.names)
    gemms = "one GEMM over their packed weights" if plan.param("packed") else f"{len(group.sites)} GEMMs"
    reason = f"sibling group of {len(group.sites)} ({members}): x pruned once for {gemms}; {reason}"
    for site in group.sites:
        site.group, site.plan, site.reason = group, plan, reason
        if plan.fold == IDENTITY:
            site.fold = None
    return True


def _common_prefix(names: list[str]) -> str:
    """The dotted module path the names share (`single_transformer_blocks.0.`), so that reasons stay short."""
    parts = [name.split(".") for name in names]
    shared = 0
    while all(len(p) > shared + 1 and p[shared] == parts[0][shared] for p in parts):
        shared += 1
    return "".join(part + "." for part in parts[0][:shared])


def _sparse_reason(site: LinearSite, ctx: PassContext, name: str) -> str:
    """The reason of a sparse layer, as its instance called `name` (which the policy may give its own reason)."""
    config = ctx.config
    path = get_path(site.plan.path)
    if not path.measured:
        reason = f"{config.n}:{config.m} on K" + (" + norm" if config.norm_compensation else "")
        reason += f", {path.describe(dict(site.plan.params))}"
        if site.lora_rank:  # a measured path's reason names it already
            reason += f" + rank-{site.lora_rank} LoRA"
    else:
        reason = site.reason
    if site.fold is not None:
        reason += f"; input {describe(site.fold.spec)} folded into the op"
    if config.policy is not None:
        reason += f"; policy: {config.policy.decision_for(name).reason}"
    if isinstance(site.tokens, torch.SymInt):
        reason += f"; M symbolic, guarded ≥ {config.min_tokens} (a smaller M recompiles)"
        if site.plan.row_multiple > 1:
            reason += f"; dense at run time when M % {site.plan.row_multiple}"
    return reason


def decide_linears(gm: torch.fx.GraphModule, ctx: PassContext) -> torch.fx.GraphModule:
    """Fill in `decision` and `reason` (and, for a sparse layer, its plan) on every site found."""
    rules = {}  # site → why the rules keep it dense (None: it may go sparse)
    for site in ctx.sites:
        _check_instances_agree(site, ctx)
        rules[id(site)] = _dense_reason(site, ctx)
        if site.lora is not None:
            site.fold = None  # the correction reads the dense x: it is written anyway
    measured = [site for site in ctx.sites if rules[id(site)] is None
                and resolve_execution(ctx.config.execution, site.device, site.float8) == "sparse"]  # fmt: skip
    for group in sibling_groups(measured):
        _decide_group(group, ctx)
    for site in ctx.sites:
        dense_reason = rules[id(site)]
        if site.group is None and site.fold is not None and len(site.x.users) > 1:
            site.fold = None  # a producer shared with other readers (a group that did not pay): x is written anyway
        if dense_reason is None and site.group is None:
            execution = resolve_execution(ctx.config.execution, site.device, site.float8)
            if execution == "sparse":
                dense_reason = _choose_sparse_path(site, ctx)
            elif execution == "dense":  # "auto" on a GPU no sparse path runs on (`execution_warning` says so)
                dense_reason = f"execution='auto': {best_way(site, ctx)[1]}"  # each path's reason
            else:  # "simulate": the path of that execution, as it is
                site.plan = plan_for(site, ctx, paths_for(execution, site.float8)[0])
        site.decision = "dense" if dense_reason else "sparse"
        if dense_reason:
            site.lora, site.plan = None, None
            # Instances agree on whether their names keep the layer dense; each says so in its own words.
            reasons = tuple(_by_name(site, ctx, name) or dense_reason for name in site.names)
        else:
            reasons = tuple(_sparse_reason(site, ctx, name) for name in site.names)
        site.reason = reasons[site.names.index(site.name)]
        site.instance_reasons = reasons if site.instances else ()
        logger.debug("lynx: %s -> %s (%s)", site.name, site.decision, site.reason)
    _warn_about_policy_mismatch(ctx)
    _warn_about_execution(ctx)
    return gm


def _check_instances_agree(site: LinearSite, ctx: PassContext) -> None:
    """A graph that serves several module instances runs each of its layers one way for all of them: where the
    options would have instances run differently, one graph cannot honour them (`regions.RegionError`)."""
    if site.name_problem is not None or len(site.names) < 2:
        return
    variants: dict[tuple, list[str]] = {}
    for name in site.names:
        variants.setdefault(ctx.config.name_variant(name), []).append(name)
    if len(variants) == 1:
        return
    placement = site.placement  # the graph's, or another root's where one graph reaches several (ctx.placement)
    model = placement.model_ref() if placement.model_ref is not None else None
    if model is not None and isinstance(model.get_submodule(placement.path), torch.nn.Linear):
        # Dynamo compiles a linear's own frame where code it runs eagerly calls it (Mochi's attention processor), and
        # runs that graph for whichever linear such code calls: no block to compile apart, so dense, not an error
        site.name_problem = (f"the graph of nn.Linear's own frame runs for any linear called outside a graph "
                             f"({len(site.names)} here), and the options treat them differently")  # fmt: skip
        return

    def described(names: list[str]) -> str:
        reason, rank = ctx.config.name_decision(names[0])
        what = f"dense ({reason})" if reason else "may go sparse" + (f" with a rank-{rank} correction" if rank else "")
        return f"{what}: {', '.join(names[:3])}" + (f" and {len(names) - 3} more" if len(names) > 3 else "")

    how = ("One graph runs every instance of a block class under diffusers' compile_repeated_blocks (or after a "
           "graph break inside a block); compile with lynx_compile.compile_repeated_blocks(model, options=...), which "
           "compiles one graph per decision pattern" if not placement.exact else
           "lynx_compile.compile_repeated_blocks should have compiled them apart: a lynx bug")  # fmt: skip
    relative = site.name[len(placement.path):].lstrip(".")
    raise RegionError(f"lynx: one graph serves {len(site.names)} instances of {placement.label}, and the options "
                      f"treat its layer {relative!r} differently in them — " + "; ".join(map(described,
                      variants.values())) + f". {how}")  # fmt: skip


_execution_warnings = Once()


def _warn_about_execution(ctx: PassContext) -> None:
    """Once a process per device: where the execution asked for cannot be had there (`execution_warning`)."""
    for device, float8 in {(site.device, site.float8) for site in ctx.sites}:
        key = (ctx.config.execution, str(device), float8)
        if key in _execution_warnings:
            continue
        message = execution_warning(ctx.config.execution, device, float8)
        if message and _execution_warnings.first(key):
            logger.warning("lynx: %s", message)


def _warn_about_policy_mismatch(ctx: PassContext) -> None:
    policy = ctx.config.policy
    if policy is None or not ctx.sites:
        return
    found = {name for site in ctx.sites if site.name_problem is None for name in site.names}
    dense_anyway = {name for site in ctx.sites if _form_reason(site, ctx) is not None for name in site.names}
    unknown = sorted(name for name in found - dense_anyway
                     if policy.key_for(name) is None and not is_adapter_linear(name))  # fmt: skip
    # A graph of a block holds part of the model: what it lacks is elsewhere, not stale.
    stale = policy.names_missing_from(found) if ctx.placement is None else []
    if ctx.placement is not None and not ctx.placement.exact:
        warn_about_uncompiled_layers(ctx.placement, policy)
    if unknown:
        logger.warning("lynx: the policy does not name %d linear(s) of this graph, which stay dense: %s",
                       len(unknown), some_names(unknown))
    if stale:
        logger.warning("lynx: the policy names %d layer(s) not in this graph (a stale policy, another model, or a "
                       "model compiled in several graphs): %s", len(stale), some_names(stale))

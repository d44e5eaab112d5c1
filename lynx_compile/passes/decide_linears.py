"""Decide per linear: sparse or dense, always with a reason a user can act on.

Rules, first match wins: name excluded/not included; execution="dense"; dtype; K % m; too few features; too few
tokens; then, for sparse execution, whether the sparse-tensor-core path exists for the layer and is measured faster
than dense for its shape (`cusparselt.measure`). A symbolic token count cannot be decided here without a guard (a
recompile at the threshold), so such a layer is marked sparse and `lynx::sparse_linear` runs it dense at run time
below `min_tokens`.
"""

from __future__ import annotations

import fnmatch
import logging

import torch
import torch.fx

from .. import cusparselt
from ..kernels.nm_prune import SUPPORTED_DTYPES
from ..kernels.prune_compress_24 import layout_supported
from .utils import LinearSite, PassContext, concrete_int, fake_value

logger = logging.getLogger(__name__)


def _dense_reason(site: LinearSite, ctx: PassContext) -> str | None:
    config = ctx.config
    matched_exclude = next((p for p in config.exclude if fnmatch.fnmatchcase(site.name, p)), None)
    if matched_exclude is not None:
        return f"excluded by {matched_exclude!r}"
    if config.include and not any(fnmatch.fnmatchcase(site.name, p) for p in config.include):
        return "not matched by include"
    if config.policy is not None:
        entry = config.policy.decision_for(site.name)
        if entry is None:
            return "not in the policy"
        if entry.decision == "dense":
            return f"policy: {entry.reason}"
        site.lora = config.policy.adapter_for(site.name)
        adapter_shape = None if site.lora is None else (site.lora.b.shape[1], site.lora.a.shape[0])
        if adapter_shape not in (None, (site.in_features, site.out_features)):
            site.lora = None
            return (f"policy: its LoRA adapter maps {adapter_shape[0]}→{adapter_shape[1]}, the layer "
                    f"{site.in_features}→{site.out_features}")
    if config.execution == "dense":
        return "execution='dense'"
    weight_dtype = fake_value(site.weight).dtype
    if site.dtype not in SUPPORTED_DTYPES:
        return f"dtype {site.dtype} unsupported"
    if weight_dtype != site.dtype:
        return f"input dtype {site.dtype} != weight dtype {weight_dtype}"
    if site.in_features % config.m:
        return f"K={site.in_features} not a multiple of m={config.m}"
    if min(site.in_features, site.out_features) < config.min_features:
        return f"features K={site.in_features}, N={site.out_features} < min_features={config.min_features}"
    if not isinstance(site.tokens, torch.SymInt) and site.tokens < config.min_tokens:
        return f"tokens M={site.tokens} < min_tokens={config.min_tokens}"
    return None


def _execution(site: LinearSite, ctx: PassContext) -> str:
    """The config's execution for this site, with "auto" resolved on the site's device."""
    if ctx.config.execution != "auto":
        return ctx.config.execution
    return "sparse" if site.device.type == "cuda" and layout_supported(site.device) else "simulate"


def _decide_sparse_path(site: LinearSite, ctx: PassContext) -> str | None:
    """For execution="sparse": set path/algorithm and return None, or return why the layer stays dense."""
    config = ctx.config
    unavailable = cusparselt.unavailable_reason(site.device, site.dtype, site.in_features, site.out_features, config)
    if unavailable:
        return unavailable
    multiple = cusparselt.CSLT_MULTIPLE
    if not isinstance(site.tokens, torch.SymInt) and site.tokens % multiple:
        return f"M={site.tokens} not a multiple of {multiple} (cuSPARSELt)"
    tokens = max(multiple, concrete_int(site.tokens) // multiple * multiple)  # a symbolic M: at its example value
    device_index = site.device.index if site.device.index is not None else torch.cuda.current_device()
    pieces = None
    if site.folded is not None:
        widths = [int(fake_value(node).shape[-1]) for node in site.folded.inputs]
        pieces = tuple(zip(widths, site.folded.activations))
    measured = cusparselt.measure(tokens, site.in_features, site.out_features, site.dtype, device_index,
                                  config.cuda_graphs, site.lora_rank, pieces)  # fmt: skip
    where = f"M={tokens}, " + ("CUDA graphs" if config.cuda_graphs else "no CUDA graphs, host time included")
    if site.lora_rank:
        where += f", rank-{site.lora_rank} LoRA included"
    if site.folded is not None:
        where += f", input {site.folded.describe()} pruned on load"
    if measured.speedup < config.min_speedup:
        return f"sparse path measured {measured.speedup:.2f}× dense ({where}) < min_speedup={config.min_speedup}"
    site.path, site.algorithm = "cusparselt", measured.algorithm
    site.reason = f"2:4 sparse tensor cores, measured {measured.speedup:.2f}× dense ({where}; alg {measured.algorithm})"
    return None


def _sparse_reason(site: LinearSite, ctx: PassContext) -> str:
    config = ctx.config
    reason = site.reason or (f"{config.n}:{config.m} on K" + (" + norm" if config.norm_compensation else "")
                             + ", simulated")  # fmt: skip
    if site.lora_rank and site.path != "cusparselt":  # the sparse path's reason names it already
        reason += f" + rank-{site.lora_rank} LoRA"
    if site.folded is not None:
        reason += f"; input {site.folded.describe()} folded into the op"
    if config.policy is not None:
        reason += f"; policy: {config.policy.decision_for(site.name).reason}"
    if isinstance(site.tokens, torch.SymInt):
        reason += f"; M symbolic: dense at run time below {config.min_tokens} tokens"
        if site.path == "cusparselt":
            reason += f" or when M % {cusparselt.CSLT_MULTIPLE}"
    return reason


def decide_linears(gm: torch.fx.GraphModule, ctx: PassContext) -> torch.fx.GraphModule:
    """Fill in `decision` and `reason` (and, for the sparse path, path and algorithm) on every site found."""
    for site in ctx.sites:
        dense_reason = _dense_reason(site, ctx)
        if site.lora is not None:
            site.folded = None  # the correction reads the dense x: it is written anyway
        if dense_reason is None and _execution(site, ctx) == "sparse":
            dense_reason = _decide_sparse_path(site, ctx)
        site.decision = "dense" if dense_reason else "sparse"
        if dense_reason:
            site.lora = None
        site.reason = dense_reason or _sparse_reason(site, ctx)
        logger.debug("lynx: %s -> %s (%s)", site.name, site.decision, site.reason)
    _warn_about_policy_mismatch(ctx)
    return gm


def _warn_about_policy_mismatch(ctx: PassContext) -> None:
    policy = ctx.config.policy
    if policy is None or not ctx.sites:
        return
    found = {site.name for site in ctx.sites}
    unknown = sorted(found - set(policy.layers))
    stale = sorted(set(policy.layers) - found)
    if unknown:
        logger.warning("lynx: the policy does not name %d linear(s) of this graph, which stay dense: %s",
                       len(unknown), ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else ""))  # fmt: skip
    if stale:
        logger.warning("lynx: the policy names %d layer(s) not in this graph (a stale policy, another model, or a "
                       "model compiled in several graphs): %s", len(stale),
                       ", ".join(stale[:5]) + (" ..." if len(stale) > 5 else ""))  # fmt: skip

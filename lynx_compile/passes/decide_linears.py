"""Decide per linear: sparse or dense, always with a reason a user can act on.

Rules, first match wins: name excluded/not included; execution="dense"; dtype; K % m; too few features; too few
tokens. A symbolic token count cannot be decided here without a guard (a recompile at the threshold), so such a
layer is marked sparse and `lynx::sparse_linear` runs it dense at run time below `min_tokens`.
"""

from __future__ import annotations

import fnmatch
import logging

import torch
import torch.fx

from ..kernels.nm_prune import SUPPORTED_DTYPES
from .utils import LinearSite, PassContext, fake_value

logger = logging.getLogger(__name__)


def _dense_reason(site: LinearSite, ctx: PassContext) -> str | None:
    config = ctx.config
    matched_exclude = next((p for p in config.exclude if fnmatch.fnmatchcase(site.name, p)), None)
    if matched_exclude is not None:
        return f"excluded by {matched_exclude!r}"
    if config.include and not any(fnmatch.fnmatchcase(site.name, p) for p in config.include):
        return "not matched by include"
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


def _sparse_reason(site: LinearSite, ctx: PassContext) -> str:
    config = ctx.config
    reason = f"{config.n}:{config.m} on K" + (" + norm" if config.norm_compensation else "")
    if isinstance(site.tokens, torch.SymInt):
        reason += f"; M symbolic: dense at run time below {config.min_tokens} tokens"
    if config.execution == "sparse":
        reason += "; simulated (no sparse-tensor-core path yet)"
    return reason


def decide_linears(gm: torch.fx.GraphModule, ctx: PassContext) -> torch.fx.GraphModule:
    """Fill in `decision` and `reason` on every site found (the graph is left unchanged)."""
    for site in ctx.sites:
        dense_reason = _dense_reason(site, ctx)
        site.decision = "dense" if dense_reason else "sparse"
        site.reason = dense_reason or _sparse_reason(site, ctx)
        logger.debug("lynx: %s -> %s (%s)", site.name, site.decision, site.reason)
    return gm

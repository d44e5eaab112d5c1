"""Replace each linear decided sparse by one `lynx::sparse_linear` node.

Every form (linear, x @ w.t(), addmm) becomes the same op on the parameter as stored (N, K), so everything after
this pass — Inductor's lowering, the sparse fast path — sees one pattern. A transpose node left without users is
removed; nothing else is, because Dynamo graphs may hold side-effecting nodes that a blanket dead-code sweep would drop.
"""

from __future__ import annotations

import logging

import torch
import torch.fx

from .. import ops  # noqa: F401  (registers torch.ops.lynx)
from .utils import PassContext

logger = logging.getLogger(__name__)


def rewrite_linears(gm: torch.fx.GraphModule, ctx: PassContext) -> torch.fx.GraphModule:
    """Put a `lynx::sparse_linear` node in place of every linear decided sparse."""
    config = ctx.config
    graph = gm.graph
    replaced: dict[torch.fx.Node, torch.fx.Node] = {}  # a linear feeding a linear: its site still names the old node
    for site in ctx.sites:
        if site.decision != "sparse":
            continue
        old = site.node
        x, bias = replaced.get(site.x, site.x), replaced.get(site.bias, site.bias)
        with graph.inserting_before(old):
            new = graph.call_function(
                torch.ops.lynx.sparse_linear.default,
                (x, site.weight, bias, config.n, config.m, config.norm_compensation, config.min_tokens, site.path,
                 site.algorithm),  # fmt: skip
            )
        new.meta.update(old.meta)
        old.replace_all_uses_with(new)
        transposed_weight = old.args[-1] if site.form in ("matmul", "addmm") else None
        graph.erase_node(old)
        if transposed_weight is not None and not transposed_weight.users:
            graph.erase_node(transposed_weight)
        replaced[old] = new
        site.node, site.x, site.bias = new, x, bias
        ctx.rewrites += 1
    if ctx.rewrites:
        graph.lint()
        gm.recompile()
    logger.debug("lynx: rewrote %d linears into lynx::sparse_linear", ctx.rewrites)
    return gm

"""Replace each linear decided sparse by one `lynx::sparse_linear` node.

Every form (linear, x @ w.t(), addmm) becomes the same op on the parameter as stored (N, K), so everything after
this pass — Inductor's lowering, the sparse paths — sees one pattern. A torchao float8 layer becomes
`lynx::float8_sparse_linear` on its weight's inner tensors (e4m3 data and scale), read through getattr nodes. Where a
producer fold (`lynx_compile.folds`) matched x's producer, the op takes the fold's inputs instead. Siblings decided as
a group (`group_siblings`) become one `lynx::sparse_linear_group` (`lynx::float8_sparse_linear_group` for float8
siblings) whose outputs replace theirs. A transpose or absorbed producer left without
users is removed; nothing else is, because Dynamo graphs may hold side-effecting nodes that a blanket dead-code
sweep would drop.

A layer with a LoRA correction gets its adapter as two buffers of the graph module (in the layer's dtype, on its
device), read by get_attr nodes. AOT lifts module buffers to graph inputs, as it does the model's parameters, so the
values are never baked into (or hashed for) a cached graph, and CUDA graphs treat them as static inputs. AOT asks
Dynamo's record of where each lifted tensor came from (`_param_name_to_source`, used to deduplicate inputs); ours
come from lynx itself, so they get a constant source naming them.
"""

from __future__ import annotations

import logging

import torch
import torch.fx
from torch._dynamo.source import ConstantSource

from ..ops import float8_sparse_linear_args, sparse_linear_args
from .group_siblings import rewrite_group
from .utils import LinearSite, PassContext, attribute_node

logger = logging.getLogger(__name__)


def rewrite_linears(gm: torch.fx.GraphModule, ctx: PassContext) -> torch.fx.GraphModule:
    """Put a `lynx::sparse_linear` node in place of every linear decided sparse (one group op for sparse siblings)."""
    graph = gm.graph
    replaced: dict[torch.fx.Node, torch.fx.Node] = {}  # a linear feeding a linear: its site still names the old node
    for site in ctx.sites:
        if site.decision != "sparse" or (site.group is not None and site.group.node is not None):
            continue  # dense, or rewritten with its group
        if site.group is not None:
            x = replaced.get(site.x, site.x)
            with graph.inserting_before(site.group.sites[0].node):
                inputs = [x] if site.fold is None else site.fold.materialize(graph, replaced)
            for member, output in zip(site.group.sites, rewrite_group(gm, site.group, inputs)):
                old = member.node
                old.replace_all_uses_with(output)
                _erase_linear(graph, member, old)
                replaced[old] = output
                member.node, member.x = output, x
            _erase_absorbed(graph, site)
            if site.plan.param("packed"):
                ctx.groups_to_pack.append(site.group)
            ctx.rewrites += 1
            continue
        old = site.node
        x, bias = replaced.get(site.x, site.x), replaced.get(site.bias, site.bias)
        with graph.inserting_before(old):
            inputs = [x] if site.fold is None else site.fold.materialize(graph, replaced)
            if site.float8:
                qdata, scale = (attribute_node(graph, site.weight, name) for name in ("qdata", "scale"))
                new = graph.call_function(torch.ops.lynx.float8_sparse_linear.default,
                                          float8_sparse_linear_args(inputs, qdata, scale, bias, site.plan))
            else:
                lora = _adapter_nodes(gm, site) if site.lora is not None else None
                new = graph.call_function(torch.ops.lynx.sparse_linear.default,
                                          sparse_linear_args(inputs, site.weight, bias, lora, site.plan))
        new.meta.update(old.meta)
        old.replace_all_uses_with(new)
        _erase_linear(graph, site, old)
        _erase_absorbed(graph, site)
        replaced[old] = new
        site.node, site.x, site.bias = new, x, bias
        ctx.rewrites += 1
    if ctx.rewrites:
        graph.lint()
        gm.recompile()
    logger.debug("lynx: rewrote %d linears into lynx::sparse_linear", ctx.rewrites)
    return gm


def _erase_absorbed(graph: torch.fx.Graph, site: LinearSite) -> None:
    """Remove x's folded producers (consumers first) that nothing reads any more."""
    for producer in site.fold.absorbed if site.fold is not None else ():
        if not producer.users:
            graph.erase_node(producer)


def _erase_linear(graph: torch.fx.Graph, site: LinearSite, old: torch.fx.Node) -> None:
    """Remove a replaced linear, and the transpose of its weight if nothing else reads it."""
    transposed_weight = old.args[-1] if site.form in ("matmul", "addmm") else None
    graph.erase_node(old)
    if transposed_weight is not None and not transposed_weight.users:
        graph.erase_node(transposed_weight)


def _adapter_nodes(gm: torch.fx.GraphModule, site: LinearSite) -> tuple[torch.fx.Node, torch.fx.Node]:
    """get_attr nodes reading the site's adapter, registered as buffers of `gm` under fresh names."""
    nodes = []
    for part, tensor in (("a", site.lora.a), ("b", site.lora.b)):
        target = _fresh_attribute(gm, f"lynx_lora_{part}_{site.name.replace('.', '_')}")
        gm.register_buffer(target, tensor.detach().to(site.device, site.dtype).contiguous())
        sources = getattr(gm, "_param_name_to_source", None)
        if sources is not None:
            sources[target] = ConstantSource(f"__lynx_{target}")
        node = gm.graph.get_attr(target)
        node.meta["example_value"] = getattr(gm, target)
        nodes.append(node)
    return nodes[0], nodes[1]


def _fresh_attribute(gm: torch.fx.GraphModule, base: str) -> str:
    name, suffix = base, 0
    while hasattr(gm, name):
        suffix += 1
        name = f"{base}_{suffix}"
    return name

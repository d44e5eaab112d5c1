"""Sibling linears: layers that read the same x, decided and run as one unit.

diffusers computes q, k and v as three linears of one normalised input (FLUX's single block adds its MLP-in to them,
3072 → 3 × 3072 + 12288). Run one by one, each prunes and compresses x again, and each GEMM alone is too narrow to
beat cuBLAS (FLUX's 3072 → 3072 measured 0.91–0.94× as a lone layer). As a group, x is pruned and compressed once
and each member's GEMM reads that one operand (`lynx::sparse_linear_group`), with its own weight: the parameters stay
the model's own, so a weight changed after compiling is what runs. The speed rule measures the unit (dense: the
members' GEMMs; sparse: one compress plus theirs); a group that does not pay falls back to its members' own
decisions.

A linear joins a group when it reads exactly the node its siblings read, has no LoRA correction, and its weight and
bias are graph inputs or attributes (so the group's op can stand before the first member). x's producer is folded
into the group's op (a norm and its modulation, `folds.norm`) only where the group's members are all of x's users;
otherwise the group reads x as written. torchao float8 layers group with float8 siblings only
(`lynx::float8_sparse_linear_group`: x pruned, quantized and compressed once; each member's FP8 GEMM on its own
weight, never packed).

Where a group's plan runs it as one GEMM (the option ``pack_siblings``, on a path whose measurement says
``packed``), the members' weights are packed as row blocks of one buffer once the graph is compiled (`pack_groups`),
in every module instance the graph serves (regional compilation), so that one GEMM reads them without a copy.
"""

from __future__ import annotations

import logging
import operator
from dataclasses import dataclass, field

import torch
import torch.fx

from ..ops import float8_sparse_linear_group_args, sparse_linear_group_args
from ..packing import pack_rows
from ..regions import qualified
from .utils import LinearSite, attribute_node, fake_value

logger = logging.getLogger(__name__)


@dataclass
class SiblingGroup:
    sites: list[LinearSite]
    node: torch.fx.Node | None = field(default=None, repr=False)  # the group op, once rewritten

    @property
    def names(self) -> list[str]:
        return [site.name for site in self.sites]

    @property
    def out_splits(self) -> tuple[int, ...]:
        return tuple(site.out_features for site in self.sites)


def sibling_groups(sites: list[LinearSite]) -> list[SiblingGroup]:
    """Groups of two or more sites reading one x, in graph order; torchao float8 layers group among themselves."""
    by_input: dict[tuple[torch.fx.Node, bool], list[LinearSite]] = {}
    for site in sites:
        if site.lora is None and _operands_are_inputs(site):
            by_input.setdefault((site.x, site.float8), []).append(site)
    groups = [SiblingGroup(members) for members in by_input.values() if len(members) > 1]
    for group in groups:
        x = group.sites[0].x
        if set(x.users) != {site.node for site in group.sites}:  # x is read elsewhere too: it is written anyway
            for site in group.sites:
                site.fold = None
    return groups


def _operands_are_inputs(site: LinearSite) -> bool:
    """Weight and bias defined without computation (placeholders, attributes): movable ahead of the first member."""
    return all(node is None or node.op in ("placeholder", "get_attr") for node in (site.weight, site.bias))


def rewrite_group(gm: torch.fx.GraphModule, group: SiblingGroup, inputs: list[torch.fx.Node]) -> list[torch.fx.Node]:
    """Put one `lynx::sparse_linear_group` (`lynx::float8_sparse_linear_group` on torchao float8 weights' inner
    tensors) reading `inputs` (x, or its folded producer's inputs) before the group's first member; returns the
    nodes standing for the members' outputs (its items), for the caller to hand to each member's users."""
    graph = gm.graph
    first = group.sites[0].node
    order = {node: index for index, node in enumerate(graph.nodes)}
    for site in group.sites:  # FX-traced graphs define a get_attr just before its use: hoist it above the op
        for operand in (site.weight, site.bias):
            if operand is not None and operand.op == "get_attr" and order[operand] > order[first]:
                first.prepend(operand)
    weights = [site.weight for site in group.sites]
    biases = [site.bias for site in group.sites]
    plan = group.sites[0].plan
    with graph.inserting_before(first):
        if group.sites[0].float8:
            qdata, scales = ([attribute_node(graph, weight, name) for weight in weights] for name in ("qdata", "scale"))
            group.node = graph.call_function(torch.ops.lynx.float8_sparse_linear_group.default,
                                             float8_sparse_linear_group_args(inputs, qdata, scales, biases, plan))
        else:
            group.node = graph.call_function(torch.ops.lynx.sparse_linear_group.default,
                                             sparse_linear_group_args(inputs, weights, biases, plan))
        outputs = [graph.call_function(operator.getitem, (group.node, index)) for index in range(len(group.sites))]
    for site, output in zip(group.sites, outputs):
        output.meta.update(site.node.meta)
    group.node.meta["example_value"] = [fake_value(site.node) for site in group.sites]
    return outputs


def pack_groups(groups: list[SiblingGroup]) -> None:
    """Pack each group's weights; a group that cannot be packed still runs (its op concatenates them on every
    call), and a warning says why."""
    for group in groups:
        why = pack_group(group)
        if why is not None:
            logger.warning("lynx: sibling group %s: weights not packed (%s): concatenated on every call",
                           group.names, why)  # fmt: skip


def pack_group(group: SiblingGroup) -> str | None:
    """Pack the members' weights of every instance the group's graph serves (`packing.pack_rows`); None when all
    are packed, else why not (the op then concatenates the unpacked ones on each call)."""
    weights = [_instance_weights(site) for site in group.sites]
    if any(found is None for found in weights) or len({len(found) for found in weights}) != 1:
        return "the weights' parameters are not known in every instance"
    for params in zip(*weights):
        why = pack_rows(params)
        if why is not None:
            return why
    return None


def _instance_weights(site: LinearSite) -> list[torch.Tensor] | None:
    """The site's weight parameter in each module instance its graph serves, in `site.instances` order; the traced
    one alone for a graph that serves one."""
    name = site.weight_name
    if name is None or name.parameter is None:
        return None
    if not site.instances:
        return [name.parameter]
    model = site.placement.model_ref() if site.placement is not None and site.placement.model_ref else None
    leaf = (name.qualified or "").rpartition(".")[2]
    if model is None or leaf != "weight":
        return None
    try:
        return [model.get_parameter(qualified(instance, "weight")) for instance in site.instances]
    except AttributeError:
        return None

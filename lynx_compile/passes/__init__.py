"""The lynx graph passes, in the order they run on Dynamo's FX graph.

Each pass has the signature ``(gm, ctx) -> gm``: `find_linears`, `place_linears` and `decide_linears` only read the
graph and fill `ctx.sites`; `rewrite_linears` changes it. After them the backend hands the graph to Inductor with
`LowerSparseLinears` installed as a post-grad pass. ``TORCH_LOGS="+lynx"`` (or ``"lynx_graphs"``) logs the graph
before the passes and after each one that changed it (`lynx_compile.logs`).
"""

from __future__ import annotations

import logging
from typing import Callable

import torch.fx

from ..logs import graphs_log, log_graph
from .decide_linears import decide_linears
from .find_linears import find_linears
from .place_linears import place_linears
from .rewrite_linears import rewrite_linears
from .utils import LinearSite, PassContext

GraphPass = Callable[[torch.fx.GraphModule, PassContext], torch.fx.GraphModule]

PASSES: list[GraphPass] = [find_linears, place_linears, decide_linears, rewrite_linears]


def dump_passes() -> str:
    """The pass order, one line each with the pass's summary."""
    return "\n".join(f"{i}. {p.__name__}: {(p.__doc__ or '').strip().splitlines()[0]}" for i, p in enumerate(PASSES))


def run_passes(gm: torch.fx.GraphModule, ctx: PassContext) -> torch.fx.GraphModule:
    logging_graphs = graphs_log.isEnabledFor(logging.DEBUG)
    if logging_graphs:
        log_graph("Dynamo's graph, before the lynx passes", gm.graph)
    for graph_pass in PASSES:
        before = str(gm.graph) if logging_graphs else ""
        gm = graph_pass(gm, ctx)
        if logging_graphs and str(gm.graph) != before:  # find and decide only read the graph
            log_graph(f"graph after {graph_pass.__name__}", gm.graph)
    return gm


__all__ = ["PASSES", "GraphPass", "LinearSite", "PassContext", "dump_passes", "run_passes"]

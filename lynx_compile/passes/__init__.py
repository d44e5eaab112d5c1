"""The lynx graph passes, in the order they run on Dynamo's FX graph.

Each pass has the signature ``(gm, ctx) -> gm``: `find_linears`, `place_linears` and `decide_linears` only read the
graph and fill `ctx.sites`; `rewrite_linears` changes it. After them the backend hands the graph to Inductor with
`LowerSparseLinears` installed as a post-grad pass. Set ``LYNX_DEBUG_PASS=<name>`` (or logging at DEBUG for
``lynx_compile``) to log the graph before and after a named pass.
"""

from __future__ import annotations

import logging
import os
from typing import Callable

import torch.fx

from .decide_linears import decide_linears
from .find_linears import find_linears
from .place_linears import place_linears
from .rewrite_linears import rewrite_linears
from .utils import LinearSite, PassContext

logger = logging.getLogger(__name__)

GraphPass = Callable[[torch.fx.GraphModule, PassContext], torch.fx.GraphModule]

PASSES: list[GraphPass] = [find_linears, place_linears, decide_linears, rewrite_linears]


def dump_passes() -> str:
    """The pass order, one line each with the pass's summary."""
    return "\n".join(f"{i}. {p.__name__}: {(p.__doc__ or '').strip().splitlines()[0]}" for i, p in enumerate(PASSES))


def run_passes(gm: torch.fx.GraphModule, ctx: PassContext) -> torch.fx.GraphModule:
    debug_pass = os.environ.get("LYNX_DEBUG_PASS")
    for graph_pass in PASSES:
        if graph_pass.__name__ == debug_pass:
            logger.warning("lynx: graph before %s:\n%s", debug_pass, gm.graph)
        gm = graph_pass(gm, ctx)
        if graph_pass.__name__ == debug_pass:
            logger.warning("lynx: graph after %s:\n%s", debug_pass, gm.graph)
    return gm


__all__ = ["PASSES", "GraphPass", "LinearSite", "PassContext", "dump_passes", "run_passes"]

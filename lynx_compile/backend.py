"""The `lynx` torch.compile backend: Dynamo's FX graph → lynx passes → Inductor.

    torch.compile(transformer, backend="lynx")                                   # simulate 2:4 + norm, Inductor
    torch.compile(transformer, backend="lynx", mode="reduce-overhead")           # + CUDA graphs
    torch.compile(transformer, backend="lynx", options={"execution": "dense"})   # A/B baseline

The backend stays thin: parse options into `LynxConfig`, run the passes, hand the graph to `compile_fx` with
`LowerSparseLinears` installed for this compile only, publish the decisions. A failing lynx pass never breaks the
user's model: the graph compiles unchanged, with a warning, unless ``strict=True``. Options the graph cannot honour
(`regions.RegionError`: one graph for block instances they treat differently) are an error either way: compiling
unchanged would silently run something else than asked.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Callable

import torch
import torch.fx

from .config import LOWERING_SLOT, LynxConfig, parse_options
from .passes import PassContext, run_passes
from .passes.group_siblings import pack_groups
from .regions import RegionError
from .report import Report, publish

logger = logging.getLogger(__name__)

BACKEND_NAME = "lynx"


def lynx_backend(
    gm: torch.fx.GraphModule,
    example_inputs: list[Any],
    *,
    mode: str | None = None,
    options: dict[str, Any] | LynxConfig | None = None,
) -> Callable[..., Any]:
    """Entry point that torch.compile calls; `mode` and `options` arrive as torch.compile was given them."""
    return compile_graph(gm, example_inputs, parse_options(options, mode))


def apply_lynx_passes(gm: torch.fx.GraphModule, config: LynxConfig) -> tuple[torch.fx.GraphModule, PassContext]:
    """Run the lynx passes on a Dynamo graph; on failure return the graph unchanged. `ctx.graph_text` keeps the
    graph before and after, for `publish_decisions` once the graph has compiled."""
    before = str(gm.graph)
    original = torch.fx.GraphModule(gm, copy.deepcopy(gm.graph))
    ctx = PassContext(config)
    try:
        gm = run_passes(gm, ctx)
    except Exception as error:
        if config.strict or isinstance(error, RegionError):
            raise
        logger.warning("lynx: passes failed (%s: %s); compiling this graph without lynx", type(error).__name__, error)
        gm, ctx = original, PassContext(config)
    ctx.graph_text = (before, str(gm.graph))
    return gm, ctx


def publish_decisions(ctx: PassContext) -> None:
    """Hand a compiled graph's decisions to the open reports (and TORCH_LOGS="lynx"). Only once it has compiled:
    where Inductor makes Dynamo restart its analysis (dynamic shapes meeting a float scalar), the graph is traced
    and handed to lynx again, and the attempt that never ran must not be counted."""
    before, after = ctx.graph_text
    publish(ctx.sites, before, after, ctx.placement)
    if logger.isEnabledFor(logging.INFO):  # the decisions, as explain would print them
        decisions = Report()
        decisions.add_graph(ctx.sites, before, after, ctx.placement)
        logger.info("lynx: decisions for this graph:\n%s", decisions)


def warn_at_the_recompile_limit() -> None:
    """Dynamo compiles a frame at most `recompile_limit` times, counting every torch.compile of its code (models of
    one class compiled with options of their own share a budget: the backend is part of the guard) unless a call
    keeps its own (`isolate_recompiles`, where the compile id counts every call's compiles, so lynx says nothing and
    leaves the warning to torch); past that Dynamo compiles no more code for the frame, and runs code compiled
    before whose guards pass, or else the frame eagerly — dense, without lynx — with one line of torch's own among
    the warnings. On the last compile lynx gets, say so in lynx's words."""
    compile_id = torch._guards.CompileContext.current_compile_id()
    limit = getattr(torch._dynamo.config, "recompile_limit", None)
    if compile_id is None or compile_id.frame_compile_id is None or not isinstance(limit, int) or _isolated():
        return
    if compile_id.frame_compile_id + 1 == limit:
        logger.warning("lynx: compile %d of this frame is Dynamo's last (torch._dynamo.config.recompile_limit=%d): "
                       "called with yet another input shape, dtype or layout, or compiled once more for another "
                       "model or set of options (each torch.compile of the same code counts), the frame runs from "
                       "then on without compiling: code compiled before whose guards pass (which may be another "
                       "compile's, with its options), or else eagerly, dense, without lynx. Mark a varying dimension "
                       "dynamic (torch._dynamo.mark_dynamic), keep inputs alike, compile with "
                       "isolate_recompiles=True (a budget per torch.compile call, where torch has it), or raise the "
                       "limit.", limit, limit)  # fmt: skip


def _isolated() -> bool:
    """Whether the frame compiling is compiled by a torch.compile call with `isolate_recompiles`."""
    current = getattr(torch._C._dynamo.eval_frame, "get_eval_frame_isolate_recompiles_id", None)
    return current is not None and current() >= 0


def compile_graph(gm: torch.fx.GraphModule, example_inputs: list[Any], config: LynxConfig) -> Callable[..., Any]:
    """Rewrite with lynx, then compile with Inductor (or, with ``compiler="eager"``, run the rewritten graph)."""
    warn_at_the_recompile_limit()
    gm, ctx = apply_lynx_passes(gm, config)
    if config.compiler == "eager":
        pack_groups(ctx.groups_to_pack)
        publish_decisions(ctx)
        return gm.forward
    from torch._inductor import config as inductor_config
    from torch._inductor.compile_fx import compile_fx

    from .passes.lower_sparse_linears import LowerSparseLinears
    from .paths import lowered_gemm

    lowered_gemm.register()
    patches = config.inductor_patches()
    # lynx's lowering takes the slot of a post-grad pass the user set in Inductor's global config: it runs that one
    # after its own (forwarding one in the options is refused: `config.LOWERING_SLOT`)
    lowering = LowerSparseLinears(config) if ctx.rewrites else None
    if lowering is not None:
        lowering.then = getattr(inductor_config, LOWERING_SLOT)
        patches[LOWERING_SLOT] = lowering
    compiled = compile_fx(gm, example_inputs, config_patches=patches)
    pack_groups(ctx.groups_to_pack)  # after compiling: Inductor traced the parameters as Dynamo saw them
    publish_decisions(ctx)
    if lowering is not None and lowering.lowered is not None:  # None: Inductor served the graph from its cache
        opaque = sum(site.opaque for site in ctx.sites)
        logger.info("lynx: lowered %d of %d lynx::sparse_linear ops for Inductor (%d left opaque: symbolic M)",
                    lowering.lowered, ctx.rewrites, opaque)  # fmt: skip
    return compiled


def register() -> None:
    """Register the backend under "lynx"; importing twice, or after the entry point registered it, is harmless."""
    from torch._dynamo.backends import registry

    if BACKEND_NAME in registry._COMPILER_FNS:
        return
    if registry._BACKENDS.get(BACKEND_NAME) is not None:
        return  # the entry point is known; lookup_backend loads and registers it, and would assert on a duplicate
    registry.register_backend(lynx_backend, name=BACKEND_NAME)

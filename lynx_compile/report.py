"""What lynx decided, per linear, for every graph it compiled: the data behind `explain` and the backend's log.

A graph that serves several block instances (regional compilation, `lynx_compile.regions`) gives one row per layer
per instance, under the layer's full name in each; the summary says how many graphs each block class took. Under
torch.distributed the token counts are this rank's (context parallelism gives each rank its share of the tokens),
and the summary says which rank of how many.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterator

import torch

from .checks import check_module
from .messages import some_names
from .passes.utils import LinearSite


@dataclass(frozen=True)
class LayerRecord:
    name: str  # qualified name of the module owning the weight
    tokens: int | str  # M; a symbolic expression (e.g. "2*s0") when Dynamo made it dynamic
    in_features: int  # K
    out_features: int  # N
    dtype: str
    decision: str  # "sparse" | "dense"
    reason: str
    form: str  # how the graph spelled it: "linear" | "matmul" | "addmm"
    flops: int  # 2·M·K·N, with a symbolic M at its example value
    flop_share: float = 0.0  # of all matched linears in the report
    graph: int = 0  # index of the Dynamo graph it was found in
    path: str = ""  # the sparse path that runs a sparse layer (`lynx_compile.paths`); "" for a dense one
    opaque: bool = False  # a sparse layer whose op stays opaque to Inductor (decides at run time; epilogue unfused)
    siblings: tuple[str, ...] = ()  # the group it runs in (x pruned once for all of them), itself included
    call: int = 1  # which call of this module it is, in the order of the report (a module may run several times)

    @classmethod
    def from_site(cls, site: LinearSite, graph: int, instance: int = 0) -> LayerRecord:
        """The row of `site` as it runs in the `instance`-th module instance its graph serves."""
        siblings = () if site.group is None else tuple(member.names[instance] for member in site.group.sites)
        return cls(
            name=site.names[instance], tokens=site.tokens if isinstance(site.tokens, int) else str(site.tokens),
            in_features=site.in_features, out_features=site.out_features, dtype=str(site.dtype).removeprefix("torch."),
            decision=site.decision, reason=site.reasons[instance], form=site.form, flops=site.flops, graph=graph,
            path=site.plan.path if site.plan is not None else "", opaque=site.opaque, siblings=siblings,
        )  # fmt: skip


@dataclass
class GraphRecord:
    before: str  # Dynamo's FX graph as lynx received it
    after: str  # the same after the lynx passes
    region: str = ""  # the block class (or region) a graph of a block serves; "" for a graph of the whole model
    instances: tuple[str, ...] = ()  # the module instances it serves, by qualified name
    # the blocks of its region it serves, where it is rooted inside them (a graph break in a block's submodule: its
    # instances are those submodules); () where `instances` are the blocks
    blocks: tuple[str, ...] = ()


def _as_run(row: LayerRecord) -> LayerRecord:
    """What a row says of how its layer runs: everything but where and when in the report it was found, and, for a
    symbolic token count, its symbol's name and the example size its FLOPs were counted at (Dynamo's per graph)."""
    if isinstance(row.tokens, str):
        row = replace(row, tokens="symbolic", flops=0)
    return replace(row, graph=0, call=1, flop_share=0.0)


def _rank_of_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@dataclass
class Report:
    layers: list[LayerRecord] = field(default_factory=list)
    graphs: list[GraphRecord] = field(default_factory=list)
    rank_of_world: tuple[int, int] = field(default_factory=_rank_of_world)  # (rank, world size) when it was made
    # the model's linear modules in no compiled graph (eager: Dynamo ran their frame itself; or not called): known
    # where the model is (`explain`, `collect_reports(model)`)
    outside: list[str] = field(default_factory=list)
    # the model's torch.ao-quantized linears (int8 or fp16 packed weights, `quantized_linears`): never in a graph
    quantized: list[str] = field(default_factory=list)

    def note_linears_outside(self, model: torch.nn.Module) -> None:
        """Fill `outside` and `quantized` from the model (or what torch.compile returned for it)."""
        self.outside, self.quantized = linears_outside(model, self), quantized_linears(model)

    def add_graph(self, sites: list[LinearSite], before: str, after: str, placement: Any = None) -> None:
        """Rows for a compiled graph: instance by instance (in model order), each instance's layers in graph order.
        Where Dynamo compiles a region again (a graph serving every instance of a block class), a row an earlier
        graph of that region already shows alike (the same tokens and decision: a recompile for other input strides)
        is not shown twice; one that differs (a warm-up call with fewer tokens, then the real one) is another call,
        as a whole model's recompile gives."""
        index = len(self.graphs)
        region, instances, blocks = ("", (), ()) if placement is None else (placement.label, placement.instances,
                                                                             placement.blocks)  # fmt: skip
        self.graphs.append(GraphRecord(before, after, region, instances, blocks))
        shown = {_as_run(layer) for layer in self.layers if region and self.graphs[layer.graph].region == region}
        calls = Counter(layer.name for layer in self.layers)
        for instance in range(max((len(site.names) for site in sites), default=0)):
            for site in sites:
                if instance < len(site.names):
                    row = LayerRecord.from_site(site, index, instance)
                    if _as_run(row) in shown:
                        continue
                    calls[row.name] += 1
                    self.layers.append(replace(row, call=calls[row.name]))
        total = sum(layer.flops for layer in self.layers) or 1
        self.layers = [replace(layer, flop_share=layer.flops / total) for layer in self.layers]

    @property
    def sparse_layers(self) -> list[LayerRecord]:
        return [layer for layer in self.layers if layer.decision == "sparse"]

    @property
    def sparse_flop_share(self) -> float:
        return sum(layer.flop_share for layer in self.sparse_layers)

    @property
    def modules(self) -> list[str]:
        """The linear modules of the report, each once, in order of first call."""
        return list(dict.fromkeys(layer.name for layer in self.layers))

    def summary(self) -> str:
        """Modules and calls: a module called twice (CFG halves, a shared projection) has two rows, and counts
        as sparsified where any of its calls is."""
        opaque = sum(layer.opaque for layer in self.sparse_layers)
        sparse_modules = {layer.name for layer in self.sparse_layers}
        calls = f" ({len(self.sparse_layers)}/{len(self.layers)} calls)" if len(self.layers) > len(self.modules) else ""
        return (
            f"{len(sparse_modules)}/{len(self.modules)} linear modules sparsified{calls}, "
            f"{100 * self.sparse_flop_share:.1f}% of linear FLOPs, in {len(self.graphs)} graph(s)"
            + (f"; {opaque} run as opaque ops (symbolic M: checked at run time, epilogue unfused)" if opaque else "")
            + self._regions_summary() + self._ranks_summary()
            + ("; no linear in the graph(s), so nothing to prune (lynx rewrites nn.Linear, F.linear and matmuls "
               "against a weight)" if self.graphs and not self.layers and not self.outside else "")
            + (f"; {len(self.outside)} linear module(s) in no graph as a linear (ran eagerly, behind a hook that "
               f"breaks the graph, inside a fused op such as nn.MultiheadAttention's, or not called: dense): "
               f"{some_names(self.outside)}" if self.outside else "")
            + (f"; {len(self.quantized)} linear module(s) quantized by torch.ao ran outside the graphs, as they are "
               f"(Dynamo does not trace their packed weights; lynx prunes float and torchao float8 linears): "
               f"{some_names(self.quantized)}" if self.quantized else "")
        )

    def regions(self) -> dict[str, dict[str, int]]:
        """Per block class (or region) compiled on its own: its instances, decision patterns (distinct sets of
        instances one graph serves) and graphs."""
        found: dict[str, dict[str, Any]] = {}
        for graph in self.graphs:
            if graph.region:
                entry = found.setdefault(graph.region, {"instances": set(), "patterns": set(), "graphs": 0})
                blocks = graph.blocks or graph.instances  # a graph rooted inside the blocks counts the blocks
                entry["instances"].update(blocks)
                entry["patterns"].add(blocks)
                entry["graphs"] += 1
        return {region: {"instances": len(entry["instances"]), "patterns": len(entry["patterns"]),
                         "graphs": entry["graphs"]} for region, entry in found.items()}  # fmt: skip

    def _regions_summary(self) -> str:
        regions = self.regions()
        if not regions:
            return ""
        return "; regional: " + ", ".join(
            f"{region} ×{entry['instances']} in {entry['patterns']} decision pattern(s), {entry['graphs']} graph(s)"
            for region, entry in regions.items())  # fmt: skip

    def _ranks_summary(self) -> str:
        rank, world = self.rank_of_world
        return f"; token counts M are rank {rank}'s of {world} ranks" if world > 1 else ""

    def to_json(self, indent: int | None = 2) -> str:
        data = {"summary": self.summary(), "layers": [asdict(layer) for layer in self.layers],
                "graphs": [asdict(graph) for graph in self.graphs], "regions": self.regions(),
                "rank": self.rank_of_world[0], "world_size": self.rank_of_world[1],
                "outside": self.outside, "quantized": self.quantized}  # fmt: skip
        return json.dumps(data, indent=indent)

    def __str__(self) -> str:
        header = ("layer", "M", "K", "N", "dtype", "decision", "FLOPs %", "reason")
        repeated = {layer.name for layer in self.layers if layer.call > 1}  # each call's row has its number
        rows = [
            (layer.name + (f" (call {layer.call})" if layer.name in repeated else ""), str(layer.tokens),
             str(layer.in_features), str(layer.out_features), layer.dtype,
             layer.decision, f"{100 * layer.flop_share:.1f}", layer.reason)
            for layer in self.layers
        ]  # fmt: skip
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
        numeric = {1, 2, 3, 6}

        def line(row: tuple[str, ...]) -> str:
            cells = [c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
            return "  ".join(cells + [row[-1]]).rstrip()

        rule = "-" * (sum(widths) + 2 * len(widths) + len(header[-1]))
        return "\n".join([line(header), rule, *map(line, rows), rule, self.summary()])


class _ActiveReports(threading.local):
    """The open `collect_reports` blocks of this thread: a compile publishes to those of the thread compiling (the
    one calling the model), not to another thread's."""

    def __init__(self) -> None:
        self.reports: list[Report] = []


_active = _ActiveReports()


@contextlib.contextmanager
def collect_reports(model: torch.nn.Module | None = None) -> Iterator[Report]:
    """Collect what every lynx compile inside the block decided:

    >>> with collect_reports(transformer) as report:
    ...     compiled(x)
    >>> print(report)

    Given the model (or what torch.compile returned for it), the report also lists its linear modules that none
    of the graphs compiled inside the block held (`Report.outside`): run eagerly, past a graph break Dynamo could
    not trace, or not called. So put the block around the model's first call, which compiles all its graphs: around
    a later call that recompiles only some of them, the others' linears are listed too. Where no graph compiled in
    the block holds a linear of the model (it compiled before; only other code compiled), only its linears with
    hooks are listed: a hook that breaks the graph at each linear leaves them all eager on torch 2.11.
    """
    if model is not None:
        check_module("lynx.collect_reports", model)
    report = Report()
    _active.reports.append(report)
    try:
        yield report
    finally:  # by identity: an enclosing block's report may compare equal (a Report is a dataclass)
        del _active.reports[next(i for i, active in enumerate(_active.reports) if active is report)]
    if model is not None:
        report.note_linears_outside(model)


def linears_outside(model: torch.nn.Module, report: Report) -> list[str]:
    """The model's `nn.Linear`s in none of the report's graphs, where the report's names are the model's and some
    are (else unknown: none). A linear whose weight a shown one holds too ran in the graph under that one's name
    (Dynamo names a tied weight's every use after one of its modules): not listed."""
    model = getattr(model, "_orig_mod", model)  # what torch.compile returned: the layers' names are the model's
    linears = {name: module for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    shown = set(report.modules)
    if not shown:
        # No graph compiled in the block held a linear. A linear's own hook that breaks the graph (diffusers'
        # layerwise casting, leaf-level offloading) leaves it to run eagerly where Dynamo does not compile
        # `nn.Linear.forward` past the break (torch 2.11): those are named. Other linears are unknown (the block may
        # be around a call that compiled only other code).
        return [name for name, module in linears.items() if has_hooks(module)] if report.graphs else []
    if not shown <= set(linears):
        return []
    shown_weights = {id(linears[name].weight) for name in shown}
    return [name for name, module in linears.items() if name not in shown and id(module.weight) not in shown_weights]


def has_hooks(module: torch.nn.Module) -> bool:
    """Whether the module has forward hooks (torch's, or diffusers' registry, which wraps its forward): what most
    often breaks a graph at a layer."""
    return bool(module._forward_hooks or module._forward_pre_hooks or hasattr(module, "_diffusers_hook"))


def quantized_linears(model: torch.nn.Module) -> list[str]:
    """The model's linears quantized by `torch.ao.quantization` (`quantize_dynamic`'s int8 and fp16, static int8,
    their fused variants): modules holding packed weights, not `nn.Linear`s, which Dynamo leaves to run eagerly."""
    model = getattr(model, "_orig_mod", model)
    packed = getattr(getattr(torch.ao.nn, "quantized", None), "Linear", None)  # the dynamic and fused ones too
    return [name for name, module in model.named_modules() if isinstance(module, packed)] if packed else []


def publish(sites: list[LinearSite], before: str, after: str, placement: Any = None) -> None:
    for report in _active.reports:
        report.add_graph(sites, before, after, placement)


__all__ = ["GraphRecord", "LayerRecord", "Report", "collect_reports", "has_hooks", "linears_outside",
           "quantized_linears"]

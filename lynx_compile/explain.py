"""`explain(model, *args, options=None, **kwargs) -> Report`: what lynx would do to a model, and why.

It captures the model with Dynamo, runs the lynx passes exactly as the backend does, and runs the rewritten graph
eagerly (Inductor's code generation is skipped: it changes speed, not decisions). It starts from empty torch.compile
caches (`torch.compiler.reset()`): Dynamo would otherwise reuse a graph compiled earlier with equal options and
report nothing; models compiled before recompile on their next call. The report lists every matched
linear with its sizes, decision, reason and share of linear FLOPs, plus each FX graph before and after the rewrite.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from .config import LynxConfig, parse_options
from .report import Report, collect_reports


def explain(model: torch.nn.Module, *args: Any, options: dict[str, Any] | LynxConfig | None = None,
            **kwargs: Any) -> Report:  # fmt: skip
    """Trace `model(*args, **kwargs)` under lynx and return the per-linear decisions.

    >>> report = lynx_compile.explain(transformer, **inputs, options={"exclude": ["*.proj_out"]})
    >>> print(report)          # aligned table + summary line
    >>> report.to_json()       # the same, machine-readable, with the graphs before and after
    """
    config = dataclasses.replace(parse_options(options), compiler="eager")
    torch.compiler.reset()
    with collect_reports() as report, torch.no_grad():
        torch.compile(model, backend="lynx", options=config)(*args, **kwargs)
    if not report.graphs:
        raise RuntimeError("lynx.explain: Dynamo captured no graph from this call (is the model's forward traceable?)")
    return report

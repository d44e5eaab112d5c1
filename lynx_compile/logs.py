"""lynx's logs as part of torch's logging (`TORCH_LOGS`), the way torch's own components log.

    TORCH_LOGS="lynx"          what lynx decided: a table per compiled graph, and what the speed rule measured
    TORCH_LOGS="+lynx"         the same, plus the FX graph before the lynx passes and after each that changed it
    TORCH_LOGS="lynx_graphs"   the graphs alone
    torch._logging.set_logs(modules={"lynx": logging.INFO, "lynx_graphs": True})   the same from Python

torch parses TORCH_LOGS while it is imported, before any lynx code runs, and refuses names it does not know. So the
names are registered twice: here, when lynx_compile is imported (for `set_logs`), and, for the environment variable,
by `_lynx_compile_logs.py`, a module outside the package (importing it costs nothing) that torch itself loads through
the `torch.backends` entry point during its import, just before it parses TORCH_LOGS; that one registers only when
TORCH_LOGS names lynx, so that otherwise lynx's loggers stay plain Python loggers. Where the entry point is not
installed (lynx_compile used from a checkout, or TORCH_DEVICE_BACKEND_AUTOLOAD=0), or where torch parses TORCH_LOGS
before it loads entry points (torch 2.11: `import torch` refuses the names), torch's module form still works:
TORCH_LOGS="lynx_compile" or "+lynx_compile".

Once torch manages them, lynx's loggers print through torch's handler (stderr, torch's format) and no longer
propagate to the root logger, like torch's own.
"""

from __future__ import annotations

import logging

import torch._logging
from torch._logging._internal import log_registry, register_artifact, register_log

LOG_ALIAS = "lynx"
GRAPHS_ARTIFACT = "lynx_graphs"
GRAPHS_DESCRIPTION = "lynx: the FX graph before the lynx passes and after each pass that changed it"
ROOT_LOGGER = "lynx_compile"


def register() -> None:
    """Make `lynx` and `lynx_graphs` names torch's logging knows (idempotent)."""
    if not log_registry.is_log(LOG_ALIAS):
        register_log(LOG_ALIAS, ROOT_LOGGER)
    if not log_registry.is_artifact(GRAPHS_ARTIFACT):
        register_artifact(GRAPHS_ARTIFACT, GRAPHS_DESCRIPTION)


register()

# Graphs go to an artifact logger under lynx_compile: shown at DEBUG ("+lynx") or when named ("lynx_graphs").
graphs_log = torch._logging.getArtifactLogger(f"{ROOT_LOGGER}.passes", GRAPHS_ARTIFACT)


def log_graph(title: str, graph: torch.fx.Graph) -> None:
    if graphs_log.isEnabledFor(logging.DEBUG):
        graphs_log.debug("lynx: %s:\n%s", title, graph)

"""Registers lynx's names with torch's logging before torch parses TORCH_LOGS (why: `lynx_compile/logs.py`).

torch loads this through its `torch.backends` entry points during `import torch`, just before it reads TORCH_LOGS,
so it imports nothing of lynx_compile (that would import torch while torch is half imported) and never raises (an
error here would fail `import torch`). It registers only when TORCH_LOGS names lynx.
"""

import os

# The same names as lynx_compile/logs.py (tests/test_logs.py checks).
LOG_ALIAS = "lynx"
GRAPHS_ARTIFACT = "lynx_graphs"
GRAPHS_DESCRIPTION = "lynx: the FX graph before the lynx passes and after each pass that changed it"
ROOT_LOGGER = "lynx_compile"


def register_if_named() -> None:
    try:
        names = {name.strip().lstrip("+-") for name in os.environ.get("TORCH_LOGS", "").split(",")}
        if names & {LOG_ALIAS, GRAPHS_ARTIFACT}:
            from torch._logging._internal import log_registry, register_artifact, register_log

            if not log_registry.is_log(LOG_ALIAS):
                register_log(LOG_ALIAS, ROOT_LOGGER)
            if not log_registry.is_artifact(GRAPHS_ARTIFACT):
                register_artifact(GRAPHS_ARTIFACT, GRAPHS_DESCRIPTION)
    except Exception:  # noqa: BLE001  (TORCH_LOGS then fails with torch's own message, which names the valid ones)
        pass

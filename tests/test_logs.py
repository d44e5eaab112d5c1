"""TORCH_LOGS names lynx: decisions at "lynx", graphs too at "+lynx", graphs alone at "lynx_graphs".

torch reads TORCH_LOGS once, while it is imported, so each case runs in a fresh interpreter. The `torch.backends`
entry point that registers the names before torch reads them is declared in pyproject.toml; an editable install made
before it existed lacks it, so the test declares it again in a throwaway distribution on PYTHONPATH (registering is
idempotent: both may run).
"""

import functools
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import _lynx_compile_logs
import lynx_compile.logs

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
import torch, lynx_compile
model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU(), torch.nn.Linear(64, 64))
with torch.no_grad():
    torch.compile(model, backend="lynx", options={"compiler": "eager"})(torch.randn(32, 64))
"""

DECISIONS = "lynx: decisions for this graph"
GRAPHS = "lynx: graph after rewrite_linears"


def run_with_torch_logs(setting: str | None, tmp_path: Path, script: str = SCRIPT) -> subprocess.CompletedProcess:
    dist = tmp_path / "lynx_logs_entry_point-0.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: lynx-logs-entry-point\nVersion: 0\n")
    (dist / "entry_points.txt").write_text("[torch.backends]\nlynx_logs = _lynx_compile_logs:register_if_named\n")
    env = {k: v for k, v in os.environ.items() if k != "TORCH_LOGS"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT), env.get("PYTHONPATH", "")])
    if setting is not None:
        env["TORCH_LOGS"] = setting
    return subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


@functools.cache
def torch_loads_entry_points_before_reading_torch_logs() -> bool:
    """torch 2.13 loads its `torch.backends` entry points, lynx's among them, before it parses TORCH_LOGS; torch 2.11
    parses it first and refuses the names (`import torch` raises "Invalid log settings"). A probe, not a version."""
    with tempfile.TemporaryDirectory() as tmp:
        return run_with_torch_logs("lynx", Path(tmp), "import torch").returncode == 0


@pytest.mark.parametrize(
    "setting, decisions, graphs",
    [("lynx", True, False), ("+lynx", True, True), ("lynx_graphs", False, True), (None, False, False),
     ("+lynx_compile", True, True)],  # the module form: any torch, installed or not
)
def test_torch_logs_shows_what_was_asked(setting, decisions, graphs, tmp_path):
    if setting in ("lynx", "+lynx", "lynx_graphs") and not torch_loads_entry_points_before_reading_torch_logs():
        pytest.skip("this torch parses TORCH_LOGS before it loads entry points: lynx's names fail there (README)")
    done = run_with_torch_logs(setting, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    stderr = done.stderr
    assert (DECISIONS in stderr) == decisions, stderr[-3000:]
    assert (GRAPHS in stderr) == graphs, stderr[-3000:]
    if decisions:  # the table, one row per linear, with its reason
        assert "2/2 linear modules sparsified" in stderr and "input gelu folded into the op" in stderr
    if graphs:
        assert "lynx.sparse_linear" in stderr and "Dynamo's graph, before the lynx passes" in stderr


def test_the_entry_point_module_registers_the_names_the_package_uses():
    for name in ("LOG_ALIAS", "GRAPHS_ARTIFACT", "GRAPHS_DESCRIPTION", "ROOT_LOGGER"):
        assert getattr(_lynx_compile_logs, name) == getattr(lynx_compile.logs, name)
    assert lynx_compile.logs.ROOT_LOGGER == lynx_compile.__name__
    assert "_lynx_compile_logs:register_if_named" in (ROOT / "pyproject.toml").read_text()

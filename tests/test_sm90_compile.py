"""Every Triton kernel lynx launches compiles for the H100 (sm_90), without a GPU.

The kernel tests run Triton's interpreter, which executes a kernel's Python and never asks the compiler: code it
runs can still fail to compile on the GPU (a loop bound's type, a constexpr used as a value), and the branches the
GPU takes (`hardware_cast()`: inline PTX casts, packed maxima) are never run at all. So a worker process, with the
interpreter off, sends every launch path (each compressor with each registered producer fold, the prune and
activation kernels) through Triton's compiler down to an sm_90 cubin instead of launching it
(`sm90_compile_worker.py`). What the kernels compute is the interpreter tests' and the GPU suite's to check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from sm90_compile_worker import MARK

triton = pytest.importorskip("triton")
pytestmark = pytest.mark.skipif("nvidia" not in getattr(triton.backends, "backends", {}),
                                reason="this Triton has no NVIDIA backend to compile with")  # fmt: skip


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    worker = os.path.join(os.path.dirname(__file__), "sm90_compile_worker.py")
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path_factory.mktemp("triton_cache"))  # compiled here, not found in a cache
    done = subprocess.run([sys.executable, worker], env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-4000:]
    ours = [line[len(MARK):] for line in done.stdout.splitlines() if line.startswith(MARK)]
    *cases, coverage = [json.loads(line) for line in ours]
    return cases, coverage


def test_every_launch_path_compiles_for_sm90(compiled):
    cases, _ = compiled
    failed = {case["case"]: case["error"] for case in cases if case["error"]}
    assert not failed, "\n\n".join(f"{name}:\n{error}" for name, error in failed.items())
    assert all(case["kernels"] for case in cases), [case["case"] for case in cases if not case["kernels"]]


def test_the_cases_reach_every_kernel_and_every_fold(compiled):
    """A kernel or a fold added later is compiled here without a change to this test, or fails it; and every case
    the worker planned reported back."""
    cases, coverage = compiled
    assert [case["case"] for case in cases] == coverage["planned"]
    reached = {name for case in cases for name in case["kernels"]}
    assert coverage["launched"] and set(coverage["launched"]) <= reached, set(coverage["launched"]) - reached
    assert coverage["folds"] == coverage["fold_examples"]

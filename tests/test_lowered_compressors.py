"""The compressors a lowered graph holds (`paths/lowered_compressors.py`): where the one-pass kernel provably reads X,
the graph records its launch for Inductor with exactly the grid, arguments and warps the eager op's launch has on
real tensors of the same layout; elsewhere it keeps the op. Traced in a process of its own with Triton's kernels
compiled, not interpreted (`lowered_compressors_worker.py`); that the recorded launches compute what the ops do is
the GPU suite's (`test_gpu_cutlass.py`)."""

import json
import os
import subprocess
import sys

import pytest

# the one-pass kernel reads these; each takes the op where the graph cannot prove it (why, beside it)
LAUNCHED = ["identity", "fp16", "gelu", "cat, one activation", "view 16 bytes in"]
KEPT = {
    "cat, two activations": "the 16-bit one-pass kernel takes one activation for both pieces",
    "gated": "a fold only the general kernel reads",
    "view 8 bytes in": "8-byte aligned: enough for the kernel, but Inductor guarantees only what is 16",
}


@pytest.fixture(scope="module", params=[1, 70, 129])
def traced(request):
    worker = os.path.join(os.path.dirname(__file__), "lowered_compressors_worker.py")
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    run = subprocess.run([sys.executable, worker, str(request.param)], capture_output=True, text=True, env=env,
                         timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)


def comparable(launches):
    """Launches as compared: a single row's stride is whatever reshape made it (fake and real tensors differ)."""
    dropped = ("head_stride", "tail_stride")
    return [{**launch, "args": {name: value for name, value in launch["args"].items()
                                if launch["args"]["M"] > 1 or name not in dropped}} for launch in launches]  # fmt: skip


@pytest.mark.parametrize("kind", ["cutlass", "fp8"])
@pytest.mark.parametrize("case", LAUNCHED)
def test_the_graph_launches_the_kernel_as_the_op_would(traced, kind, case):
    result = traced[f"{kind}: {case}"]
    assert result["ops"] == []
    assert len(result["launches"]) == 1 and comparable(result["launches"]) == comparable(result["eager"])


def test_fp8_reads_two_pieces_through_two_activations(traced):
    result = traced["fp8: cat, two activations"]
    assert result["ops"] == [] and comparable(result["launches"]) == comparable(result["eager"])
    assert (result["launches"][0]["args"]["HEAD"], result["launches"][0]["args"]["TAIL"]) == (0, 2)


@pytest.mark.parametrize("kind", ["cutlass", "fp8"])
@pytest.mark.parametrize("case", sorted(KEPT))
def test_the_graph_keeps_the_op_where_the_kernel_cannot_be_proven_to_read_x(traced, kind, case):
    if (kind, case) == ("fp8", "cat, two activations"):
        pytest.skip("the FP8 one-pass kernel reads it (above)")
    result = traced[f"{kind}: {case}"]
    op = "prune_compress_24_cutlass" if kind == "cutlass" else "prune_quantize_compress_fp8"
    assert result["launches"] == [] and result["ops"] == [f"lynx.{op}.default"], KEPT[case]
    if case == "view 8 bytes in":  # eager takes the one-pass kernel on an address it sees: only the proof differs
        assert len(result["eager"]) == 1
    else:
        assert result["eager"] == "general"

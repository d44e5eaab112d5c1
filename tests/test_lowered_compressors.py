"""The compressors a lowered graph holds (`paths/lowered_compressors.py`): where the one-pass kernel provably reads X,
the graph records its launch for Inductor with exactly the grid, arguments and warps the eager op's launch has on
real tensors of the same layout; elsewhere it keeps the op. Traced in a process of its own with Triton's kernels
compiled, not interpreted (`lowered_compressors_worker.py`); that the recorded launches compute what the ops do is
the GPU suite's (`test_gpu_cutlass.py`). And the compressors as the speed rule times them, with about the lowered
graph's host cost, against the ops (under the interpreter)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lynx_compile.folds import FoldSpec
from lynx_compile.paths import lowered_compressors

# the one-pass kernel reads these; each takes the op where the graph cannot prove it (why, beside it)
LAUNCHED = ["identity", "fp16", "gelu", "cat, one activation", "cat, two activations, head whole chunks",
            "view 16 bytes in", "long rows"]
KEPT = {
    "cat, two activations": "the 16-bit one-pass kernel takes two activations only a chunk at a time: here one row is "
                            "one chunk",
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
    """Launches as compared: a single row's stride is whatever reshape made it (fake and real tensors differ); what
    Inductor takes a traced launch to write has no eager counterpart (below)."""
    dropped = ("head_stride", "tail_stride")
    return [{**{key: value for key, value in launch.items() if key != "written"},
             "args": {name: value for name, value in launch["args"].items()
                      if launch["args"]["M"] > 1 or name not in dropped}} for launch in launches]  # fmt: skip


@pytest.mark.parametrize("kind", ["cutlass", "fp8"])
@pytest.mark.parametrize("case", LAUNCHED)
def test_the_graph_launches_the_kernel_as_the_op_would(traced, kind, case):
    result = traced[f"{kind}: {case}"]
    assert result["ops"] == []
    assert len(result["launches"]) == 1 and comparable(result["launches"]) == comparable(result["eager"])


@pytest.mark.parametrize("kind", ["cutlass", "fp8"])
@pytest.mark.parametrize("case", LAUNCHED)
def test_inductor_takes_the_launch_to_write_its_outputs_alone(traced, kind, case):
    """Inductor's analysis of the kernel's Triton IR finds the outputs written and x only read. Were x counted
    written (as it was while the chunk's indices came out of the call that loads x: the analysis takes a call's
    every argument as flowing into its results), a graph whose first sparse layer reads the graph's input would
    mutate an input and lose its CUDA graphs, and Inductor would order x's other readers after the kernel."""
    launches = traced[f"{kind}: {case}"]["launches"]
    assert launches and all(launch["written"] == ["meta_ptr", "scale_ptr", "values_ptr"] for launch in launches)


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


@settings(max_examples=12, deadline=None)
@given(rows=st.integers(1, 80), k=st.sampled_from([128, 256]), fold=st.sampled_from(["identity", "gelu", "gated"]),
       fp8=st.booleans(), seed=st.integers(0, 2**16))  # fmt: skip
def test_the_speed_rules_compressor_computes_what_the_op_does(rows, k, fold, fp8, seed):
    """`as_lowered_*` (the compressor as the speed rule times it: a planned launch, or the op where the one-pass
    kernel cannot read x) writes the op's operand, bit for bit, every call."""
    generator = torch.Generator().manual_seed(seed)
    spec, inputs = {
        "identity": (FoldSpec("identity", ()), 1),
        "gelu": (FoldSpec("activation", ("gelu_tanh",)), 1),
        "gated": (FoldSpec("gated", ("silu",)), 2),
    }[fold]
    inputs = [torch.randn(rows, k, generator=generator).to(torch.bfloat16) for _ in range(inputs)]
    if fp8:
        compress = lowered_compressors.as_lowered_fp8(inputs, spec)
        expected = torch.ops.lynx.prune_quantize_compress_fp8(inputs, spec.encode(), True)
    else:
        compress = lowered_compressors.as_lowered_cutlass(inputs, spec)
        expected = torch.ops.lynx.prune_compress_24_cutlass(inputs, spec.encode())
    for _ in range(2):
        for out, reference in zip(compress(), expected):
            assert out.dtype == reference.dtype and out.shape == reference.shape
            assert torch.equal(out.view(torch.uint8), reference.view(torch.uint8))


def test_what_the_lowering_traces_keys_inductors_graph_cache():
    """A change to the lowered compressors changes the lowering pass's uuid (Inductor's FX graph cache key)."""
    from pathlib import Path

    from lynx_compile.kernels import launcher
    from lynx_compile.passes.lower_sparse_linears import source_files

    hashed = {Path(file).resolve() for file in source_files()}
    assert Path(lowered_compressors.__file__).resolve() in hashed and Path(launcher.__file__).resolve() in hashed

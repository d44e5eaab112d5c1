"""Building lynx's CUTLASS kernel on first use: the cache, failures that say why, and the path's reasons where the
kernel cannot run (no GPU needed: the compiler is replaced by a stand-in)."""

import sys

import pytest
import torch

from lynx_compile.kernels import cutlass_gemm
from lynx_compile.kernels.cutlass_gemm import GemmConfig
from lynx_compile.method import Method
from lynx_compile.paths import get_path
from lynx_compile.paths.base import Workload


@pytest.fixture
def stand_in_compiler(tmp_path, monkeypatch):
    """Builds go to a fresh directory, with a Python one-liner in place of nvcc (`script` says what it does with the
    output path, its last argument)."""
    monkeypatch.setenv("LYNX_BUILD_DIR", str(tmp_path))
    monkeypatch.setattr(cutlass_gemm, "toolchain_error", lambda: None)
    monkeypatch.setattr(cutlass_gemm, "_toolchain_fingerprint", lambda: "stand-in")
    script = {"code": ""}

    def command(config, dtype, output):
        return [sys.executable, "-c", script["code"], str(output)]

    monkeypatch.setattr(cutlass_gemm, "_compile_command", command)
    return script


def test_a_build_is_cached_and_reused(stand_in_compiler):
    stand_in_compiler["code"] = "import sys; open(sys.argv[1], 'w').write('library')"
    path = cutlass_gemm.build(GemmConfig(), torch.bfloat16)
    assert path.read_text() == "library" and path.parent.parent == cutlass_gemm.cache_dir()
    stand_in_compiler["code"] = "import sys; sys.exit(1)"  # a second build would fail: it must not run
    assert cutlass_gemm.build(GemmConfig(), torch.bfloat16) == path
    assert not list(path.parent.glob("*.tmp"))


def test_a_failed_build_says_why_and_leaves_no_library(stand_in_compiler):
    stand_in_compiler["code"] = "import sys; sys.stderr.write('error: no such atom'); sys.exit(2)"
    with pytest.raises(RuntimeError, match="failed \\(nvcc log: ") as raised:
        cutlass_gemm.build(GemmConfig(), torch.float16)
    log = raised.value.args[0].split("nvcc log: ")[1].rstrip(")")
    assert "no such atom" in open(log).read()
    path = cutlass_gemm.library_path(GemmConfig(), torch.float16)
    assert not path.exists() and not list(path.parent.glob("*.tmp"))


def test_the_key_follows_the_configuration_and_the_element_type(stand_in_compiler):
    paths = {cutlass_gemm.library_path(config, dtype) for config in (GemmConfig(), GemmConfig(cluster_m=4))
             for dtype in (torch.bfloat16, torch.float16)}  # fmt: skip
    assert len(paths) == 4


def test_a_missing_toolchain_is_a_reason(monkeypatch):
    monkeypatch.setattr(cutlass_gemm, "nvcc", lambda: None)
    cutlass_gemm.toolchain_error.cache_clear()
    try:
        assert cutlass_gemm.toolchain_error().startswith("no nvcc found")
        with pytest.raises(RuntimeError, match="no nvcc found"):
            cutlass_gemm.build(GemmConfig(), torch.bfloat16)
    finally:
        cutlass_gemm.toolchain_error.cache_clear()


def test_the_path_says_why_it_cannot_run_a_cpu_layer():
    workload = Workload(64, 128, 256, torch.bfloat16, torch.device("cpu"), False)
    path = get_path("cutlass")
    assert not path.runs_on(torch.device("cpu"))
    assert path.unavailable_reason(workload, Method()).startswith("no sparse-tensor-core kernel for cpu")


@pytest.mark.parametrize("config", [*cutlass_gemm.CONFIGS, *cutlass_gemm.FP8_CONFIGS,
                                    GemmConfig(256, 128, 128, 1, 2), GemmConfig(64, 256, 64, 2, 1, pingpong=True),
                                    GemmConfig(128, 128, 128, 1, 1, stream_k=True)], ids=lambda config: config.name)
def test_a_configuration_is_named_as_it_is_parsed_and_built(config):
    # The name is the measurement cache's and the op's record of the kernel: parsed back, it must build the same one.
    assert GemmConfig.parse(config.name) == config
    defines = dict(flag.removeprefix("-D").split("=") for flag in config.defines(torch.float8_e4m3fn))
    assert (defines["LYNX_STREAMK"], defines["LYNX_PINGPONG"]) == (str(int(config.stream_k)), str(int(config.pingpong)))
    assert config.name.endswith("_streamk") == config.stream_k


def test_stream_k_with_the_ping_pong_schedule_is_refused_before_a_build():
    with pytest.raises(ValueError, match="stream-K"):
        GemmConfig(pingpong=True, stream_k=True)
    with pytest.raises(ValueError, match="not a CUTLASS configuration"):
        GemmConfig.parse("128x256x64_c2x1_streamk")

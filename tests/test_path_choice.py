"""The speed rule's choice between sparse paths: among those that beat dense by min_speedup, the fastest with its
norm scale applied (a path that applies it in a pass of its own pays that pass); the threshold itself is on the time
without it."""

import functools

import pytest
import torch
import torch.nn as nn

import lynx_compile
from lynx_compile.paths import PATHS, SparsePath, clear_measurements, register_path
from lynx_compile.paths.base import Measurement


class TimedToy(SparsePath):
    """Runs the simulate numerics on the CPU; its times are set per test, in ms against a dense time of 1 ms:
    `in_model` (the layer as a compiled model runs it) and `epilogue` (its separate scale pass)."""

    groups = True

    def __init__(self, name: str) -> None:
        self.name = name
        self.in_model, self.epilogue = 1.0, 0.0

    def runs_on(self, device):
        return device.type == "cpu"

    def tune(self, workload, timer):
        settings = {"members": [{}] * len(workload.out_splits)} if workload.out_splits else {}
        return settings, self.in_model

    def unfused_epilogue_ms(self, workload, timer):
        return self.epilogue

    def forward(self, inputs, weight, bias, lora, plan):
        return PATHS["simulate"].forward(inputs, weight, bias, lora, plan)


@pytest.fixture
def toys(tmp_path, monkeypatch):
    from lynx_compile.paths import measurements

    monkeypatch.setenv("LYNX_CACHE_DIR", str(tmp_path))  # measured afresh
    dense_ms = functools.cache(lambda workload: 1.0)  # times set, not timed: no noise
    monkeypatch.setattr(measurements, "_dense_ms", dense_ms)
    fused, unfused = register_path(TimedToy("toy_fused")), register_path(TimedToy("toy_unfused"))
    clear_measurements()
    yield fused, unfused
    del PATHS["toy_fused"], PATHS["toy_unfused"]
    clear_measurements()


def chosen_paths(model, x):
    options = {"execution": "sparse", "sparse_paths": ["toy_fused", "toy_unfused"], "compiler": "eager"}
    report = lynx_compile.explain(model, x, options=options)
    return {layer.name: (layer.path, layer.reason) for layer in report.layers}


@pytest.fixture
def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64)).eval()


def test_the_path_fastest_with_its_scale_applied_wins(toys, model):
    fused, unfused = toys
    fused.in_model, fused.epilogue = 0.70, 0.0  # 1.43× dense
    unfused.in_model, unfused.epilogue = 0.60, 0.20  # 1.67× dense in a model, 1.25× with its scale pass
    chosen = chosen_paths(model, torch.randn(4, 32, 64))
    assert {path for path, _ in chosen.values()} == {"toy_fused"}
    assert all(reason.startswith("toy_fused, measured 1.43× dense") for _, reason in chosen.values())


def test_a_cheap_scale_pass_keeps_the_faster_gemm(toys, model):
    fused, unfused = toys
    fused.in_model, fused.epilogue = 0.70, 0.0
    unfused.in_model, unfused.epilogue = 0.60, 0.05
    assert {path for path, _ in chosen_paths(model, torch.randn(4, 32, 64)).values()} == {"toy_unfused"}


def test_only_paths_past_the_threshold_compete(toys, model):
    fused, unfused = toys
    fused.in_model, fused.epilogue = 0.99, 0.0  # 1.01×: below min_speedup, though fastest with the scale applied
    unfused.in_model, unfused.epilogue = 0.80, 0.30
    chosen = chosen_paths(model, torch.randn(4, 32, 64))
    assert {path for path, _ in chosen.values()} == {"toy_unfused"}


def test_when_none_passes_the_reason_names_the_closest(toys, model):
    fused, unfused = toys
    fused.in_model, unfused.in_model = 0.99, 0.98
    chosen = chosen_paths(model, torch.randn(4, 32, 64))
    assert {path for path, _ in chosen.values()} == {""}  # dense
    assert all(reason.startswith("sparse path measured 1.02× dense") for _, reason in chosen.values())


def test_measurements_without_an_epilogue_time_still_load():
    record = {"path": "cusparselt", "params": {"algorithm": 1}, "dense_ms": 2.0, "sparse_ms": 1.0, "tokens": 64}
    measurement = Measurement.from_dict(record)
    assert measurement.epilogue_ms == 0.0 and measurement.standalone_ms == 1.0
    assert Measurement.from_dict(measurement.to_dict()) == measurement

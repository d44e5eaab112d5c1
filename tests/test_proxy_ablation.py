"""benchmarks/proxy_ablation.py: the ablation's rows on the trained tiny DiT (CPU, a few samples), and the
per-layer sensitivity summary."""

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
from proxy_ablation import main, prediction, sensitivity  # noqa: E402

from lynx_compile.policy import LayerPolicy, Policy  # noqa: E402


def test_sensitivity_summarises_the_layers_measured_alone():
    errors = {"transformer_blocks.0.attn1.to_q": 0.3, "transformer_blocks.1.attn1.to_q": 0.1,
              "transformer_blocks.0.ff.net.2": 0.2}  # fmt: skip
    layers = {name: LayerPolicy("sparse", "", error=error, error_without_norm=2 * error, flop_share=0.1)
              for name, error in errors.items()}  # fmt: skip
    layers["time_embed.linear_1"] = LayerPolicy("dense", "tokens 4 < min_tokens=16")  # never measured: left out
    summary = sensitivity(Policy(layers=layers))
    assert summary["layers"] == 3 and (summary["min"], summary["max"]) == (0.1, 0.3)
    assert summary["median"] == 0.2 and summary["median_without_norm"] == 0.4
    assert summary["by_kind"] == {"transformer_blocks.*.attn1.to_q": statistics.median([0.3, 0.1]),
                                  "transformer_blocks.*.ff.net.2": 0.2}  # fmt: skip


def test_prediction_correlates_each_objective_over_the_policies_that_sparsify():
    def row(objective, target, predicted, sampled, share=0.5):
        return {"objective": objective, "target": target, "calibrated_error": predicted, "relative_error": sampled,
                "sparse_flop_share": share}  # fmt: skip

    rows = [row("one-step", 0.1, 0.1, 0.05), row("one-step", 0.2, 0.2, 0.10), row("one-step", 0.4, 0.4, 0.20),
            row("one-step", 0.05, 0.0, 0.0, share=0.0),  # an empty policy: predicts and samples nothing, left out
            row("trajectory", 0.1, 0.1, 0.3), row("trajectory", 0.2, 0.2, 0.2), row("trajectory", 0.4, 0.3, 0.1),
            {"variant": "+ norm compensation", "relative_error": 0.5, "sparse_flop_share": 1.0}]  # fmt: skip
    summary = prediction(rows)
    one_step, trajectory = summary["one-step"], summary["trajectory"]
    assert one_step["policies"] == 3 and abs(one_step["pearson"] - 1) < 1e-12  # sampled = predicted / 2
    assert one_step["within_target"] == 3 and abs(one_step["mean_relative_gap"] - 0.5) < 1e-12
    assert trajectory["pearson"] < -0.9 and trajectory["within_target"] == 2  # 0.3 > 0.1 is the one outside
    assert prediction(rows[:2]) == {}  # fewer than three policies: no correlation to speak of
    flat = [row("one-step", 0.2, 0.2, sampled) for sampled in (0.1, 0.2, 0.3)]
    assert prediction(flat)["one-step"]["pearson"] is None  # one predicted value: no correlation, not NaN


def test_the_ablation_runs_on_the_tiny_dit(tmp_path):
    out = tmp_path / "ablation.json"
    result = main(["--model", "tiny", "--samples", "10", "--steps", "5", "--calibration-samples", "10",
                   "--device", "cpu", "--targets", "0.05", "0.4", "--lora-ranks", "8", "--trajectory-samples", "0",
                   "--json", str(out)])  # fmt: skip
    assert json.loads(out.read_text())["rows"] == result["rows"]
    rows = {row["variant"]: row for row in result["rows"]}
    assert list(rows) == ["naive 2:4 (no norm compensation)", "+ norm compensation", "+ LoRA 8", "calibrated 0.05",
                          "calibrated 0.05 + LoRA 8", "calibrated 0.4", "calibrated 0.4 + LoRA 8"]  # fmt: skip
    everything = result["token_layer_share"]
    assert 0.5 < everything < 1 and not result["per_sample_layers"] == []
    for name in ("naive 2:4 (no norm compensation)", "+ norm compensation", "+ LoRA 8"):
        assert rows[name]["sparse_flop_share"] == everything  # every token layer, the per-sample ones dense
    assert rows["calibrated 0.05"]["sparse_flop_share"] <= rows["calibrated 0.4"]["sparse_flop_share"] <= everything
    for row in rows.values():
        assert 0 <= row["class_accuracy"] <= 1
        assert (row["relative_error"] > 0) == (row["sparse_flop_share"] > 0)  # a sparse layer changes the samples
    assert result["sensitivity"]["min"] <= result["sensitivity"]["median"] <= result["sensitivity"]["max"]

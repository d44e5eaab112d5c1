"""The paper's ablation on a trained proxy DiT, and its per-layer 2:4 sensitivity (issue 16, items 2 and 3).

    python benchmarks/proxy_ablation.py [--model shapes|tiny] [--samples 200] [--device cuda] [--json out.json]

One table per model: naive 2:4 (every token layer sparse, no compensation) → + norm compensation → + LoRA of ranks
8/32/64 → + calibrated dense fallback (one-step `calibrate` at several targets, without and with LoRA, and the
trajectory `calibrate(sampler=)` at the default target), each with the share of linear FLOPs sparse and the sample
quality against dense samples from the same noise (class accuracy by the model's classifier, PSNR, relative error).
Layers run sparsified through forward hooks (`lynx_compile.eager.sparsified`: the numerics `execution="simulate"`
compiles, which the test suite checks against it), so no variant pays a compile and the run fits a few minutes on a
GPU. The per-sample layers (M = batch: timestep embedders, adaLN modulation) stay dense throughout, as a pipeline's
batch of 1–2 keeps them by `min_tokens`. Per-layer sensitivity: each token layer's relative output error alone, with
and without norm compensation, as `calibrate` measures it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "examples"), str(Path(__file__).parent)]
import lynx_compile  # noqa: E402
from lynx_compile.calibration import DEFAULT_TARGET  # noqa: E402
from lynx_compile.eager import linears_of, sparsified  # noqa: E402
from lynx_compile.method import Method  # noqa: E402
from timestep_sensitivity import layer_kind, per_sample_layers  # noqa: E402

# The example module of each trained model, and the shape of its images (channels, height, width).
MODELS = {"tiny": ("tiny_dit", (1, 16, 16)), "shapes": ("shapes_dit", (3, 32, 32))}


def sensitivity(policy) -> dict:
    """Each sparsifiable layer's error alone (norm compensation on / off), summarised, and by kind of layer."""
    layers = {name: layer for name, layer in policy.layers.items() if layer.error is not None}
    errors = [layer.error for layer in layers.values()]
    kinds: dict[str, list[float]] = {}
    for name, layer in layers.items():
        kinds.setdefault(layer_kind(name), []).append(layer.error)
    return {"layers": len(layers), "min": min(errors), "median": statistics.median(errors), "max": max(errors),
            "median_without_norm": statistics.median(layer.error_without_norm for layer in layers.values()),
            "by_kind": {kind: statistics.median(values) for kind, values in sorted(kinds.items())}}  # fmt: skip


def prediction(rows: list[dict]) -> dict:
    """Per objective: how well the error `calibrate` bounded predicts the sampled one (issue 16's goal: Pearson ≥
    0.9), over the calibrated rows whose policy sparsified anything (an empty policy predicts 0 and samples 0)."""
    summary = {}
    for objective in ("one-step", "trajectory"):
        chosen = [row for row in rows if row.get("objective") == objective and row["sparse_flop_share"] > 0
                  and row["calibrated_error"] > 0]  # fmt: skip
        if len(chosen) < 3:
            continue
        predicted = torch.tensor([row["calibrated_error"] for row in chosen], dtype=torch.float64)
        sampled = torch.tensor([row["relative_error"] for row in chosen], dtype=torch.float64)
        flat = predicted.min() == predicted.max() or sampled.min() == sampled.max()  # no correlation to speak of
        pearson = None if flat else torch.corrcoef(torch.stack([predicted, sampled]))[0, 1].item()
        summary[objective] = {"policies": len(chosen), "pearson": pearson,
                              "within_target": sum(row["relative_error"] <= row["target"] for row in chosen),
                              "mean_relative_gap": ((sampled - predicted).abs() / predicted).mean().item()}  # fmt: skip
    return summary


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=sorted(MODELS), default="shapes")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps of each sample")
    parser.add_argument("--calibration-samples", type=int, default=40)
    parser.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale of the sampler")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--targets", type=float, nargs="*", default=[0.05, 0.1, DEFAULT_TARGET, 0.4])
    parser.add_argument("--lora-ranks", type=int, nargs="*", default=[8, 32, 64])
    parser.add_argument("--trajectory-samples", type=int, default=20, help="0: no trajectory calibration")
    parser.add_argument("--trajectory-targets", type=float, nargs="*", default=[DEFAULT_TARGET])
    parser.add_argument("--checkpoint", type=Path, help="the model's weights (default: its example's checkpoint)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    module_name, image_shape = MODELS[args.model]
    example = importlib.import_module(module_name)

    def sample(m, labels: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return example.sample(m, labels, noise, steps=args.steps, guidance=args.guidance, null_label=example.NULL_LABEL)
    model = (example.load_model(args.checkpoint) if args.checkpoint else example.load_model()).to(args.device)
    classes = 10

    def noise_of(n: int, seed: int) -> torch.Tensor:
        return torch.randn(n, *image_shape, generator=torch.Generator().manual_seed(seed)).to(args.device)

    labels = (torch.arange(args.samples) % classes).to(args.device)
    noise = noise_of(args.samples, 1)
    n = args.calibration_samples
    calibration_calls = example.calibration_inputs((torch.arange(n) % classes).to(args.device), noise_of(n, 2))
    per_sample = per_sample_layers(model, calibration_calls[0])
    options = {"exclude": sorted(per_sample)}
    with torch.no_grad():
        dense = sample(model, labels, noise)
    dense_accuracy = example.sample_quality(dense, labels)["class_accuracy"]
    print(f"{args.model}: dense class accuracy {dense_accuracy:.3f}; per-sample layers kept dense: "
          f"{len(per_sample)}", flush=True)  # fmt: skip

    def calibrate(target: float, rank: int = 0, **extra):
        return lynx_compile.calibrate(model, None if "sampler" in extra else calibration_calls, target=target,
                                      lora_rank=rank, options=options, progress_bar=False, **extra)  # fmt: skip

    modules = linears_of(model)
    rows = []

    def evaluate(variant: str, policy, method: Method, use_adapters: bool = True, **extra) -> None:
        chosen = {name: modules[name] for name, layer in policy.layers.items() if layer.decision == "sparse"}
        with sparsified(chosen, method, policy.adapters if use_adapters else None):
            samples = sample(model, labels, noise)
        quality = example.sample_quality(samples, labels, reference=dense)
        share = sum(policy.layers[name].flop_share or 0.0 for name in chosen)
        rows.append({"variant": variant, "sparse_flop_share": share, **quality, **extra})
        print(f"{variant:34} {100 * share:6.1f}% {quality['class_accuracy']:6.3f} {quality['psnr_db']:7.2f} dB "
              f"{quality['relative_error']:7.4f}", flush=True)  # fmt: skip

    everything = calibrate(1e9)  # no bound: every token layer, with its error alone recorded
    print(f"{'variant':34} {'FLOPs':>7} {'acc':>6} {'PSNR':>10} {'rel err':>7}")
    evaluate("naive 2:4 (no norm compensation)", everything, Method(norm_compensation=False))
    evaluate("+ norm compensation", everything, Method())
    for rank in args.lora_ranks:
        evaluate(f"+ LoRA {rank}", calibrate(1e9, rank), Method(), lora_rank=rank)
    for target in args.targets:
        for rank in dict.fromkeys((0, 32 if 32 in args.lora_ranks else args.lora_ranks[0])):
            policy = calibrate(target, rank)
            evaluate(f"calibrated {target}" + (f" + LoRA {rank}" if rank else ""), policy, Method(), target=target,
                     lora_rank=rank, objective="one-step", calibrated_error=policy.model_error)  # fmt: skip
    if args.trajectory_samples:
        sampler_labels = (torch.arange(args.trajectory_samples) % classes).to(args.device)
        sampler_noise = noise_of(args.trajectory_samples, 3)
        for target in args.trajectory_targets:
            policy = calibrate(target, sampler=lambda m: sample(m, sampler_labels, sampler_noise))
            evaluate(f"trajectory-calibrated {target}", policy, Method(), target=target, objective="trajectory",
                     calibrated_error=policy.model_error)  # fmt: skip

    result = {"date": time.strftime("%Y-%m-%d"), "model": args.model, "device": str(args.device),
              "device_name": torch.cuda.get_device_name() if "cuda" in str(args.device) else "CPU",
              "torch": torch.__version__, "command": "python " + " ".join(sys.argv),
              "args": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
              "dense_class_accuracy": dense_accuracy, "per_sample_layers": sorted(per_sample),
              "token_layer_share": sum(layer.flop_share or 0.0 for layer in everything.layers.values()
                                       if layer.decision == "sparse"),
              "sensitivity": sensitivity(everything), "rows": rows, "prediction": prediction(rows),
              "seconds": time.perf_counter() - started}  # fmt: skip
    print(json.dumps(result["sensitivity"], indent=1))
    print("calibrated error vs sampled relative error:", json.dumps(result["prediction"]))
    print(f"{result['seconds']:.0f} s in all")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()

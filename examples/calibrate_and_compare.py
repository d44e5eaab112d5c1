"""Calibrate a sparsity policy on the project's trained tiny DiT, then compare samples: dense vs lynx.

    python examples/calibrate_and_compare.py [--targets 0.05 0.1 0.2 0.4] [--lora-ranks 32] [--out /tmp/lynx_compare]
                                             [--inductor]

Loads `examples/checkpoints/tiny_dit_digits.safetensors` (made by `examples/train_tiny_dit.py`), calibrates on noised
digits at four timesteps for each target (bound on the relative error of the model output), without and with the
closed-form LoRA correction of each rank in --lora-ranks, and samples 100 digits (10 of each class) from the same
noise with: the dense model; lynx under each calibrated policy; lynx with every
prunable linear sparse (all-sparse), with and without norm compensation. Prints a quality table (class accuracy by
a classifier trained on the real digits; PSNR and relative error against the dense samples) and, where matplotlib
is installed (the `examples` extra), saves a grid of samples and a plot of quality against the sparsified share of
linear FLOPs. Simulate execution (every linear may be pruned, `min_tokens=1`); the lynx variants compile with
`compiler="eager"` (the same rewrite and numerics without Inductor's code generation, 15–45 s a variant on 2 CPU
cores; `--inductor` to use it). With the defaults (8 calibrations, 10 variants of 100 samples × 25 DDIM steps) it
took 14 minutes (827 s) on 2 CPU cores that other work shared (load average 3–4): expect less on an idle machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import lynx_compile  # noqa: E402
from lynx_compile.calibration import DEFAULT_TARGET  # noqa: E402
from tiny_dit import calibration_inputs, load_model, sample, sample_quality  # noqa: E402


def lynx_samples(model, labels, noise, options) -> tuple[torch.Tensor, float]:
    # Ten compiles of one model would pass Dynamo's recompile limit (8) and leave the last ones running dense.
    torch.compiler.reset()
    options = {"execution": "simulate", "min_tokens": 1, **options}
    with lynx_compile.collect_reports() as report:
        samples = sample(torch.compile(model, backend="lynx", options=options), labels, noise)
    return samples, report.sparse_flop_share


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--targets", type=float, nargs="+", default=[0.05, 0.1, DEFAULT_TARGET, 0.4])
    parser.add_argument("--lora-ranks", type=int, nargs="*", default=[32])
    parser.add_argument("--out", type=Path, default=Path("/tmp/lynx_compare"))
    parser.add_argument("--inductor", action="store_true", help="compile the lynx variants with Inductor (slow here)")
    args = parser.parse_args()
    started = time.perf_counter()
    compiler = {} if args.inductor else {"compiler": "eager"}
    model = load_model()
    labels = torch.arange(100) % 10
    noise = torch.randn(100, 1, 16, 16, generator=torch.Generator().manual_seed(1))

    args.out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        dense = sample(model, labels, noise)
    runs = {"dense": (dense, 0.0)}
    for target in dict.fromkeys(sorted(args.targets)):  # each target once
        for rank in dict.fromkeys((0, *args.lora_ranks)):
            policy = lynx_compile.calibrate(model, calibration_inputs(labels[:40], noise[:40]), target=target,
                                            lora_rank=rank, options={"min_tokens": 1})  # fmt: skip
            name = f"target {target}" + (f" + LoRA {rank}" if rank else "")
            policy.save(args.out / f"policy_{target}_lora{rank}.json")
            corrected = sum(layer.lora_rank > 0 for layer in policy.layers.values())
            print(f"{name}: {sum(l.decision == 'sparse' for l in policy.layers.values())}/{len(policy.layers)} "
                  f"layers sparse ({corrected} corrected), calibration error {policy.model_error:.4f}")  # fmt: skip
            runs[name] = lynx_samples(model, labels, noise, {**compiler, "policy": policy})
    runs["all-sparse + norm"] = lynx_samples(model, labels, noise, compiler)
    runs["all-sparse, no norm"] = lynx_samples(model, labels, noise, {**compiler, "norm_compensation": False})

    print(f"\n{'variant':24} {'FLOPs sparse':>12} {'class acc':>9} {'PSNR dB':>8} {'rel err':>8}")
    rows = []
    for name, (samples, share) in runs.items():
        quality = sample_quality(samples, labels, reference=dense)
        rows.append((name, share, quality))
        print(f"{name:24} {100 * share:11.1f}% {quality['class_accuracy']:9.2f} {quality['psnr_db']:8.1f} "
              f"{quality['relative_error']:8.3f}")  # fmt: skip
    save_figures(runs, rows, args.out)
    print(f"{time.perf_counter() - started:.0f} s in all")


def save_figures(runs, rows, out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[examples]'): no figures")
        return
    fig, axes = plt.subplots(len(runs), 1, figsize=(10, 1.3 * len(runs)))
    for ax, (name, (samples, _)) in zip(axes, runs.items()):
        row = torch.cat([s[0] for s in samples[:20]], dim=1).cpu()  # 20 samples side by side
        ax.imshow(row, cmap="gray", vmin=-1, vmax=1)
        ax.set_ylabel(name, rotation=0, ha="right", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.savefig(out / "samples.png", dpi=120, bbox_inches="tight")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for index, (name, share, quality) in enumerate(rows):  # the colour cycle has 10: markers tell the rest apart
        ax.scatter(100 * share, quality["class_accuracy"], label=name, marker="os^D"[index // 10 % 4])
    ax.set_xlabel("linear FLOPs sparsified (%)")
    ax.set_ylabel("class accuracy of samples")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "quality_vs_sparsity.png", dpi=120)
    print(f"saved {out}/samples.png and {out}/quality_vs_sparsity.png")


if __name__ == "__main__":
    main()

"""One-step vs trajectory calibration on the project's trained tiny DiT: does what `calibrate` bounds predict how
the policy samples? (issue 16, items 1 and 3)

    PYTHONPATH=. python benchmarks/calibration_trajectory.py [--targets 0.1 0.2 0.4] [--lora-ranks 8 32] [--steps 10]
        [--eval-samples 100] [--calibration-samples 20] [--ablation] [--json benchmarks/results/.../file.json]

For each target and LoRA rank (0 = none), calibrates twice: one-step (the default objective: the model output on
noised digits at t ∈ {999, 700, 400, 100}, 40 of them, as `examples/calibrate_and_compare.py` does) and trajectory
(`sampler=`: DDIM sampling of `--calibration-samples` digits from their own noise, seed 2; the calibration samples
are the model calls that sampler makes). Every policy is then evaluated on held-out sampling: `--eval-samples`
digits (10 a class) from other noise (seed 1), the same `--steps` DDIM steps, against the dense samples from the
same noise: linear FLOPs sparsified, relative error, PSNR, class accuracy. Prints the table, the Pearson
correlation of predicted (what calibrate bounded: `policy.model_error`) vs sampled error per objective, and every
target where a LoRA policy samples worse than the uncorrected one. `--ablation` adds the method's ablation: naive
2:4 everywhere → + norm compensation → + LoRA (8/32/64, closed form) → + calibrated dense fallback.

Policies are applied eagerly (forward hooks running `method.sparse_linear_ref`, the reference the compiled op
runs); one policy is also sampled through `torch.compile(backend="lynx")` (simulate, eager compiler) and the
difference printed, so the shortcut is checked, not assumed. Simulate execution, `min_tokens=1` (every linear may
be pruned), one CPU thread per process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent.parent / "examples"))
import lynx_compile  # noqa: E402
from lynx_compile.eager import linears_of, relative_error, sparsified  # noqa: E402
from lynx_compile.method import Method  # noqa: E402
from tiny_dit import calibration_inputs, load_model, sample, sample_quality  # noqa: E402

OPTIONS = {"min_tokens": 1}


def sample_with_policy(model, policy, sampler):
    """The sampler's result with the policy's sparse layers (and their corrections) run as lynx runs them."""
    modules = linears_of(model)
    layers = {name: modules[name] for name, layer in policy.layers.items() if layer.decision == "sparse"}
    adapters = {name: policy.adapter_for(name) for name in layers if policy.adapter_for(name) is not None}
    with sparsified(layers, Method(**policy.options), adapters):
        return sampler(model)


def sparse_share(policy) -> float:
    return sum(layer.flop_share or 0 for layer in policy.layers.values() if layer.decision == "sparse")


def pearson(xs, ys) -> float | None:
    if len(xs) < 3 or np.std(xs) == 0 or np.std(ys) == 0:
        return None
    return float(np.corrcoef(xs, ys)[0, 1])


def evaluate(name, samples, share, dense, labels, extra=None) -> dict:
    quality = sample_quality(samples, labels, reference=dense)
    row = {"variant": name, "flop_share": share, "sampled_error": quality["relative_error"],
           "psnr_db": quality["psnr_db"], "class_accuracy": quality["class_accuracy"], **(extra or {})}  # fmt: skip
    print(f"{name:34} {100 * share:6.1f}% {row.get('predicted_error', float('nan')):9.4f} "
          f"{row['sampled_error']:8.4f} {row['psnr_db']:7.1f} {row['class_accuracy']:6.2f}", flush=True)  # fmt: skip
    return row


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--targets", type=float, nargs="+", default=[0.1, 0.2, 0.4])
    parser.add_argument("--lora-ranks", type=int, nargs="*", default=[8, 32])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--eval-samples", type=int, default=100)
    parser.add_argument("--calibration-samples", type=int, default=20)
    parser.add_argument("--ablation", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    model = load_model()

    labels = torch.arange(args.eval_samples) % 10
    noise = torch.randn(args.eval_samples, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    calibration_labels = torch.arange(args.calibration_samples) % 10
    calibration_noise = torch.randn(args.calibration_samples, 1, 16, 16, generator=torch.Generator().manual_seed(2))

    def eval_sampler(m):
        return sample(m, labels, noise, steps=args.steps)

    def calibration_sampler(m):
        return sample(m, calibration_labels, calibration_noise, steps=args.steps)

    one_step_inputs = calibration_inputs(labels[:40], noise[:40])
    dense = eval_sampler(model)
    print(f"dense: class accuracy {sample_quality(dense, labels)['class_accuracy']:.2f}")
    print(f"\n{'variant':34} {'FLOPs':>7} {'predicted':>9} {'sampled':>8} {'PSNR':>7} {'acc':>6}")
    rows, policies = [], {}
    for objective in ("one-step", "trajectory"):
        for target in args.targets:
            for rank in (0, *args.lora_ranks):
                calibration_started = time.perf_counter()
                if objective == "one-step":
                    policy = lynx_compile.calibrate(model, one_step_inputs, target=target, lora_rank=rank,
                                                    options=OPTIONS, progress_bar=False)  # fmt: skip
                else:
                    policy = lynx_compile.calibrate(model, sampler=calibration_sampler, target=target, lora_rank=rank,
                                                    options=OPTIONS, progress_bar=False)  # fmt: skip
                seconds = time.perf_counter() - calibration_started
                name = f"{objective}, target {target}" + (f", LoRA {rank}" if rank else "")
                policies[name] = policy
                rows.append(evaluate(name, sample_with_policy(model, policy, eval_sampler), sparse_share(policy),
                                     dense, labels, {"objective": objective, "target": target, "lora_rank": rank,
                                                     "predicted_error": policy.model_error,
                                                     "calibration_psnr_db": (policy.sampled or {}).get("psnr_db"),
                                                     "sampler_runs": (policy.sampled or {}).get("sampler_runs"),
                                                     "calibration_s": seconds}))  # fmt: skip

    summary = {}
    for objective in ("one-step", "trajectory"):
        mine = [row for row in rows if row["objective"] == objective]
        correlation = pearson([r["predicted_error"] for r in mine], [r["sampled_error"] for r in mine])
        worse = [f"target {r['target']}, LoRA {r['lora_rank']}: {r['sampled_error']:.4f} vs {base['sampled_error']:.4f}"
                 f" (acc {r['class_accuracy']:.2f} vs {base['class_accuracy']:.2f})"
                 for r in mine if r["lora_rank"]
                 for base in mine if base["lora_rank"] == 0 and base["target"] == r["target"]
                 if r["sampled_error"] > base["sampled_error"]]  # fmt: skip
        within = sum(r["sampled_error"] <= r["target"] for r in mine)
        summary[objective] = {"pearson_predicted_vs_sampled": correlation, "lora_samples_worse": worse,
                              "held_out_within_target": f"{within}/{len(mine)}"}  # fmt: skip
        shown = "n/a (fewer than 3 policies)" if correlation is None else f"{correlation:.3f}"
        print(f"\n{objective}: Pearson(predicted, sampled) = {shown}"
              f"; held-out sampled error within target: {within}/{len(mine)}; LoRA samples worse than no LoRA at the"
              f" same target: {len(worse)} of {sum(1 for r in mine if r['lora_rank'])}")  # fmt: skip
        for line in worse:
            print(f"  {line}")

    # The eager evaluation is the reference the compiled op runs; check it against the compiled path once.
    checked = next(name for name in reversed(list(policies)) if name.startswith("trajectory"))
    torch.compiler.reset()
    compiled = torch.compile(model, backend="lynx", options={"execution": "simulate", "compiler": "eager",
                                                             "policy": policies[checked], **OPTIONS})  # fmt: skip
    via_compile = relative_error(eval_sampler(compiled), sample_with_policy(model, policies[checked], eval_sampler))
    print(f"\ncompiled vs eager evaluation of {checked!r}: relative difference {via_compile:.2e}")

    ablation = run_ablation(model, one_step_inputs, eval_sampler, dense, labels, rows) if args.ablation else []
    result = {"date": time.strftime("%Y-%m-%d"), "machine": f"CPU, {os.cpu_count()} cores",
              "torch": torch.__version__, "command": "python " + " ".join(sys.argv), "args": vars(args) | {
                  "json": str(args.json)}, "rows": rows, "summary": summary, "ablation": ablation,
              "compiled_vs_eager": {"variant": checked, "relative_difference": via_compile},
              "seconds": time.perf_counter() - started}  # fmt: skip
    print(f"{result['seconds']:.0f} s in all")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return result


def run_ablation(model, one_step_inputs, eval_sampler, dense, labels, rows) -> list[dict]:
    """naive 2:4 → + norm compensation → + LoRA (8/32/64) → + calibrated dense fallback, every linear sparse until
    the last step. The fallback rows are this run's trajectory policies at target 0.2 (if calibrated)."""
    print(f"\nablation\n{'variant':34} {'FLOPs':>7} {'predicted':>9} {'sampled':>8} {'PSNR':>7} {'acc':>6}")
    everything = lynx_compile.calibrate(model, one_step_inputs, target=1e9, options=OPTIONS, progress_bar=False)
    bare = lynx_compile.calibrate(model, one_step_inputs, target=1e9, progress_bar=False,
                                  options={**OPTIONS, "norm_compensation": False})  # fmt: skip
    solutions = lynx_compile.fit_lora(model, one_step_inputs, rank=64, options=OPTIONS, progress_bar=False)
    table = [evaluate("naive 2:4 (all, no norm)", sample_with_policy(model, bare, eval_sampler), sparse_share(bare),
                      dense, labels),
             evaluate("+ norm compensation (all)", sample_with_policy(model, everything, eval_sampler),
                      sparse_share(everything), dense, labels)]  # fmt: skip
    for rank in (8, 32, 64):
        corrected = everything.with_lora(solutions, rank)
        table.append(evaluate(f"+ LoRA {rank} (all)", sample_with_policy(model, corrected, eval_sampler),
                              sparse_share(corrected), dense, labels))  # fmt: skip
    for row in rows:
        if row["objective"] == "trajectory" and row["target"] == 0.2:
            fallback = dict(row, variant=f"+ calibrated fallback ({row['variant']})")
            table.append(fallback)
            print(f"{fallback['variant']:34} {100 * row['flop_share']:6.1f}% {row['predicted_error']:9.4f} "
                  f"{row['sampled_error']:8.4f} {row['psnr_db']:7.1f} {row['class_accuracy']:6.2f}")  # fmt: skip
    return table


if __name__ == "__main__":
    main()

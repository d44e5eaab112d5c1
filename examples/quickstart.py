"""Quickstart: lynx on the project's trained tiny DiT, on CPU, in about a minute.

    python examples/quickstart.py [--samples 50] [--steps 25] [--out quickstart.png] [--inductor]

Loads the trained checkpoint (`examples/tiny_dit.py`: a diffusers DiT, 4 blocks, hidden 128, drawing 16×16 digits),
asks `lynx_compile.explain` what lynx would do with it, calibrates a policy (`lynx_compile.calibrate`: which layers
can be pruned within an error budget), then samples `--samples` digits from one noise tensor four ways: dense, and
compiled with lynx as naive 2:4, 2:4 with norm compensation, and under the calibrated policy. It prints the quality
of each against dense (class accuracy of the samples by a classifier trained on real digits, PSNR and relative
error against the dense samples), the time each took, and writes the samples as a PNG grid, a row per variant.

The lynx variants compile with `compiler="eager"`: Dynamo and the lynx passes as always (the same decisions and
numerics), the rewritten graph run as it is instead of through Inductor, whose code generation costs 15–45 s a
variant on 2 CPU cores; `--inductor` compiles them as you would deploy. On CPU lynx simulates the method (prune,
then the same dense GEMM): its numerics, not its speed, so lynx is slower than dense here.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).parent))
import lynx_compile  # noqa: E402
from tiny_dit import calibration_inputs, load_model, sample, sample_quality  # noqa: E402

SPEED = ("Speed: none on CPU, where lynx simulates the method. The 2:4 sparse GEMM runs on sm_90 GPUs (H100, H200): "
         "there execution='auto' takes it for each layer measured faster than dense; compile in bf16 with "
         "mode='reduce-overhead' (README, 'Running on a GPU').")  # fmt: skip


def timed_samples(model, labels, noise, steps: int, options: dict | None) -> dict:
    """Samples of `model` (compiled with lynx when `options` is given), with the compile and per-step times."""
    compile_s, share = 0.0, 0.0
    if options is not None:
        model = torch.compile(model, backend="lynx", options=options)
        probe = dict(hidden_states=noise, timestep=torch.full((len(noise),), 500), class_labels=labels,
                     return_dict=False)  # fmt: skip
        with lynx_compile.collect_reports() as report, torch.no_grad():
            start = time.perf_counter()
            model(**probe)  # compiles; one forward besides
            compile_s = time.perf_counter() - start
        share = report.sparse_flop_share
    start = time.perf_counter()
    samples = sample(model, labels, noise, steps=steps)
    return {"samples": samples, "share": share, "compile_s": compile_s,
            "step_s": (time.perf_counter() - start) / steps}  # fmt: skip


def save_grid(runs: dict[str, dict], path: Path, columns: int = 20, zoom: int = 3) -> None:
    """A row of the first `columns` samples per variant, its name on the left."""
    cell, label_width = 16 * zoom, 190
    grid = Image.new("L", (label_width + columns * cell, len(runs) * cell), color=255)
    draw = ImageDraw.Draw(grid)
    for row, (name, run) in enumerate(runs.items()):
        pixels = ((run["samples"][:columns, 0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        strip = np.concatenate(list(pixels.numpy()), axis=1)
        image = Image.fromarray(strip).resize((strip.shape[1] * zoom, cell), Image.NEAREST)
        grid.paste(image, (label_width, row * cell))
        draw.text((4, row * cell + cell // 2 - 6), name, fill=0)
    grid.save(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=50,
                        help="digits to sample, as many of each class (benchmarks/RESULTS.md: 100)")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps")
    parser.add_argument("--out", type=Path, default=Path("quickstart.png"))
    parser.add_argument("--inductor", action="store_true", help="compile the lynx variants with Inductor (slow here)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    eager = {} if args.inductor else {"compiler": "eager"}

    model = load_model()
    labels = torch.arange(args.samples) % 10
    noise = torch.randn(args.samples, 1, 16, 16, generator=torch.Generator().manual_seed(1))

    report = lynx_compile.explain(model, hidden_states=noise, timestep=torch.full((args.samples,), 500),
                                  class_labels=labels, return_dict=False)  # fmt: skip
    print(f"explain: {report.summary()}  (print(report) shows the table: each layer, its sizes, decision, reason)")

    start = time.perf_counter()
    policy = lynx_compile.calibrate(model, calibration_inputs(labels[:40], noise[:40]))
    sparse = [name for name, layer in policy.layers.items() if layer.decision == "sparse"]
    print(f"calibrate: {len(sparse)} of {len(policy.layers)} layers within target {policy.target} "
          f"(model output error {policy.model_error:.3f}) in {time.perf_counter() - start:.1f} s; "
          f"policy.save('policy.json') keeps it")  # fmt: skip

    runs = {
        "dense": timed_samples(model, labels, noise, args.steps, None),
        "lynx 2:4 (naive)": timed_samples(model, labels, noise, args.steps, {**eager, "norm_compensation": False}),
        "lynx 2:4 + norm": timed_samples(model, labels, noise, args.steps, {**eager}),
        "lynx calibrated policy": timed_samples(model, labels, noise, args.steps, {**eager, "policy": policy}),
    }

    compiled_by = "Inductor" if args.inductor else "compiler='eager'"
    print(f"\n{args.samples} samples, {args.steps} DDIM steps, the same noise; quality against the dense samples; "
          f"CPU times ({torch.get_num_threads()} threads; lynx: {compiled_by})")  # fmt: skip
    print(f"{'variant':24} {'FLOPs sparse':>12} {'class acc':>9} {'PSNR dB':>8} {'rel err':>8} {'compile s':>9} "
          f"{'s/step':>7}")  # fmt: skip
    dense = runs["dense"]["samples"]
    for name, run in runs.items():
        quality = sample_quality(run["samples"], labels, reference=dense)
        psnr = "—" if name == "dense" else f"{quality['psnr_db']:.1f}"
        compile_s = "—" if name == "dense" else f"{run['compile_s']:.1f}"
        print(f"{name:24} {100 * run['share']:11.1f}% {quality['class_accuracy']:9.2f} {psnr:>8} "
              f"{quality['relative_error']:8.3f} {compile_s:>9} {run['step_s']:7.3f}")  # fmt: skip
    save_grid(runs, args.out)
    print(f"\nsamples: {args.out} (a row per variant); {time.perf_counter() - started:.0f} s in all")
    print(SPEED)


if __name__ == "__main__":
    main()

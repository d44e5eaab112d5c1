"""The step schedule as built (`lynx_compile.StepSchedule` under `compile_repeated_blocks`) on the trained tiny DiT:
quality against dense samples for a few schedules, to set beside the eager measurement of
`timestep_sensitivity.py` that motivated it.

    python benchmarks/step_schedule.py [--samples 100] [--json out.json]

Every token layer may be sparse (per-sample layers excluded, as a pipeline's batch keeps them dense), simulate
execution, lynx's eager compiler (the rewrite without Inductor's code generation); one compile of each variant per
block class, then 25 DDIM steps from fixed noise, the schedule advanced before each step.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent.parent / "examples"), str(Path(__file__).parent)]
import lynx_compile  # noqa: E402
from timestep_sensitivity import per_sample_layers  # noqa: E402
from tiny_dit import calibration_inputs, load_model, sample, sample_quality  # noqa: E402

SCHEDULES = {"every step": range(25), "steps 10-19": range(10, 20), "steps 5-24 (dense for the first 5)": range(5, 25),
             "steps 0-4": range(0, 5)}  # fmt: skip


class Stepped(torch.nn.Module):
    """The model with the schedule advanced at each call (one call per DDIM step)."""

    def __init__(self, model, schedule):
        super().__init__()
        self.model, self.schedule, self.calls = model, schedule, 0

    def forward(self, **kwargs):
        self.schedule.at(self.calls)
        self.calls += 1
        return self.model(**kwargs)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    labels = torch.arange(args.samples) % 10
    noise = torch.randn(args.samples, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    model = load_model()
    with torch.no_grad():
        dense = sample(model, labels, noise)
    per_sample = sorted(per_sample_layers(model, calibration_inputs(labels[:10], noise[:10])[0]))
    options = {"execution": "simulate", "compiler": "eager", "exclude": per_sample}
    rows = []
    for name, steps in SCHEDULES.items():
        torch.compiler.reset()
        model = load_model()
        schedule = lynx_compile.StepSchedule(steps)
        lynx_compile.compile_repeated_blocks(model, options=options, steps=schedule, blocks=["BasicTransformerBlock"])
        with lynx_compile.collect_reports() as report:  # decisions of both variants, once each compiles
            samples = sample(Stepped(model, schedule), labels, noise)
        if name == "every step":  # the first: its report holds the sparse variant alone
            token_share = report.sparse_flop_share
        share = token_share * len(schedule.sparse_steps) / 25  # every step costs the same FLOPs
        rows.append({"schedule": name, "sparse_flop_share": share, **sample_quality(samples, labels, dense)})
        print(f"{name:36} {100 * share:5.1f}% {rows[-1]['class_accuracy']:.2f} {rows[-1]['psnr_db']:6.2f} dB",
              flush=True)  # fmt: skip
    result = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "samples": args.samples,
              "dense_class_accuracy": sample_quality(dense, labels)["class_accuracy"], "rows": rows,
              "seconds": time.perf_counter() - started}  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()

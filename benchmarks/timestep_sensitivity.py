"""Per-timestep sensitivity on the project's trained tiny DiT: are some denoising steps more fragile to 2:4 activation
pruning than others, and does a timestep schedule buy more quality per sparse FLOP than per-layer selection?
(issue 16 item 4: measured before building anything)

    PYTHONPATH=. python benchmarks/timestep_sensitivity.py [--samples 100] [--steps 25] [--window 5]
        [--targets 0.1 0.2 0.4] [--trajectory-targets 0.2] [--starts 0 5 10 15 20] [--middles 10:20 5:20]
        [--policy-spans 0:25 5:25 10:25 15:25 10:20] [--threads 1]
        [--json benchmarks/results/.../timestep_sensitivity.json]

Sampling: `--samples` digits (balanced classes) from fixed noise (seed 1), `--steps` DDIM steps; step 0 is the
noisiest. Every variant is compared with the dense samples from the same noise (relative L2 error, PSNR, class
accuracy). The layers are those lynx sparsifies with default options (a `calibrate` at an unbounded target on
40 noised digits from other noise, seed 2, records the rest dense: here `proj_out_2`, N = 4 < min_features), less
the per-sample layers (M = batch: a pipeline's batch of 1-2 keeps them dense by min_tokens), which only the rows
marked "per-sample layers too" and the per-kind section sparsify (the calibrated policies exclude them). A
*schedule* says, per layer, at which steps it runs sparse (hooks running `eager.sparse_output`, what `calibrate` and
the simulate path compute). Sparse share = the share of the whole sampling run's linear FLOPs that run sparse.

Sections: the one-step output error at each step along the dense trajectory (all layers sparse, inputs dense);
all layers sparse in one window of steps only (also with the per-sample layers); "dense for the first k steps" (and
its mirror, "sparse for the first k steps", k ≤ steps / 2); all layers sparse in a middle span only (`--middles
a:b`: steps a to b − 1, dense before and after); each layer kind (one per name, the 4 blocks together) sparse in
the early or late half only; the calibrated policies combined with schedules (`--policy-spans`; default: dense for
the first k steps, k < steps − window, and steps 10–19): one-step `calibrate` at `--targets` on the 40 noised
digits, and trajectory `calibrate(sampler=...)` at `--trajectory-targets` with a sampler of 20 other digits (noise
seed 3), the same steps, every step sparse.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Iterator

import torch

sys.path.insert(0, str(Path(__file__).parent.parent / "examples"))
import lynx_compile  # noqa: E402
from lynx_compile.eager import hooked, linears_of, relative_error, sparse_output, sparsified  # noqa: E402
from lynx_compile.method import Method, token_rows  # noqa: E402
from tiny_dit import calibration_inputs, load_model, sample, sample_quality  # noqa: E402

Schedule = dict[str, frozenset[int]]  # layer name -> the denoising steps at which it runs sparse


def steps_in(start: int, stop: int) -> frozenset[int]:
    return frozenset(range(start, stop))


def span(text: str) -> tuple[int, int]:
    """'a:b' -> (a, b): steps a to b - 1."""
    start, stop = (int(part) for part in text.split(":"))
    if not 0 <= start < stop:
        raise argparse.ArgumentTypeError(f"a span is 'start:stop' with 0 <= start < stop, not {text!r}")
    return start, stop


@contextlib.contextmanager
def scheduled(model: torch.nn.Module, method: Method, schedule: Schedule) -> Iterator[None]:
    """Within the block, each layer named in `schedule` runs sparsified at its steps and dense at the others.

    A step is one call of `model`'s forward, counted from 0 as the block opens: a sampler calling the model once
    per denoising step (as `tiny_dit.sample` does; a CFG pipeline calling it twice a step would count two)."""
    modules = linears_of(model)
    step = -1

    def advance(module, args, kwargs) -> None:
        nonlocal step
        step += 1

    def make_hook(name: str):
        steps = schedule[name]
        # Returning None keeps the dense output; a layer the method would not prune returns None as well.
        return lambda module, args, out: sparse_output(module, args[0], method, None) if step in steps else None

    handle = model.register_forward_pre_hook(advance, with_kwargs=True)
    try:
        with hooked({name: modules[name] for name in schedule}, make_hook):
            yield
    finally:
        handle.remove()


def sparse_flop_share(flop_shares: dict[str, float], schedule: Schedule, steps: int) -> float:
    """The share of a sampling run's linear FLOPs that run sparse: every step costs the same FLOPs."""
    return sum(flop_shares[name] * len(active & steps_in(0, steps)) / steps for name, active in schedule.items())


def layer_kind(name: str) -> str:
    """The name with its block index starred: one kind per position in the block."""
    return re.sub(r"^transformer_blocks\.\d+\.", "transformer_blocks.*.", name)


def per_sample_layers(model, call: dict) -> set[str]:
    """The linears whose token count is the batch (timestep embedder, adaLN, DiT's output modulation): at a
    pipeline's batch of 1 or 2 (CFG) lynx keeps them dense by min_tokens=16; at this benchmark's batch it would not."""
    rows: dict[str, int] = {}

    def make_hook(name: str):
        def record(module, args, out) -> None:  # returns None: the output stays the module's own
            rows.setdefault(name, token_rows(args[0]))

        return record

    with hooked(linears_of(model), make_hook):
        model(**call)
    return {name for name, count in rows.items() if count == call["hidden_states"].shape[0]}


def one_step_errors(model, method: Method, layers: list[str], sampler) -> list[dict]:
    """At each step of the dense trajectory: the model output's relative error with every layer sparse, on that
    step's dense input (the error a step makes, before any compounding)."""
    calls = []
    handle = model.register_forward_pre_hook(lambda module, args, kwargs: calls.append(kwargs), with_kwargs=True)
    try:
        sampler(model)
    finally:
        handle.remove()
    rows = []
    modules = linears_of(model)
    for index, kwargs in enumerate(calls):
        with torch.no_grad():
            dense = model(**kwargs)[0]
        with sparsified({name: modules[name] for name in layers}, method):
            sparse = model(**kwargs)[0]
        rows.append({"step": index, "timestep": int(kwargs["timestep"][0]),
                     "output_error": relative_error(sparse, dense)})  # fmt: skip
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--window", type=int, default=5)
    parser.add_argument("--targets", type=float, nargs="*", default=[0.1, 0.2, 0.4])
    parser.add_argument("--starts", type=int, nargs="+", default=[0, 5, 10, 15, 20])
    parser.add_argument("--middles", type=span, nargs="*", default=[(10, 20), (5, 20)])
    parser.add_argument("--trajectory-targets", type=float, nargs="*", default=[0.2])
    parser.add_argument("--policy-spans", type=span, nargs="*")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model = load_model()
    method = Method()
    steps = args.steps

    labels = torch.arange(args.samples) % 10
    noise = torch.randn(args.samples, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    calibration_labels = torch.arange(40) % 10
    calibration_noise = torch.randn(40, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    calibration_calls = calibration_inputs(calibration_labels, calibration_noise)

    def sampler(m):
        return sample(m, labels, noise, steps=steps)

    dense = sampler(model)
    dense_accuracy = sample_quality(dense, labels)["class_accuracy"]
    print(f"dense: class accuracy {dense_accuracy:.2f}", flush=True)

    # Default options: an unbounded target keeps every layer lynx would sparsify, and records its FLOP share.
    everything_policy = lynx_compile.calibrate(model, calibration_calls, target=1e9, progress_bar=False)
    flop_shares = {name: layer.flop_share for name, layer in everything_policy.layers.items()}
    prunable = [name for name, layer in everything_policy.layers.items() if layer.decision == "sparse"]
    # What a pipeline would prune: its batch keeps the per-sample layers dense, which these batches of 40 and 100 do
    # not (a first run with them sparse measured the timestep embedder's early steps, not the model's).
    per_sample = per_sample_layers(model, calibration_calls[0])
    token_layers = [name for name in prunable if name not in per_sample]
    pipeline_options = {"exclude": sorted(per_sample)}

    def evaluate(section: str, variant: str, schedule: Schedule, **extra) -> dict:
        run_started = time.perf_counter()
        with scheduled(model, method, schedule):
            samples = sampler(model)
        quality = sample_quality(samples, labels, reference=dense)
        row = {"section": section, "variant": variant,
               "sparse_share": sparse_flop_share(flop_shares, schedule, steps),
               "relative_error": quality["relative_error"], "psnr_db": quality["psnr_db"],
               "class_accuracy": quality["class_accuracy"], "seconds": time.perf_counter() - run_started,
               **extra}  # fmt: skip
        print(f"{section:10} {variant:62} {100 * row['sparse_share']:6.1f}% {row['relative_error']:7.4f} "
              f"{row['psnr_db']:6.1f} {row['class_accuracy']:5.2f}", flush=True)  # fmt: skip
        return row

    def all_layers(active: frozenset[int], layers: list[str] = token_layers) -> Schedule:
        return {name: active for name in layers}

    print(f"\nper-sample layers, dense below unless said: {sorted(per_sample)}")
    print("one-step output error per step (every token layer sparse, dense inputs)")
    per_step = one_step_errors(model, method, token_layers, sampler)
    for row in per_step:
        print(f"  step {row['step']:2} (t={row['timestep']:3}): {row['output_error']:.4f}")

    print(f"\n{'section':10} {'variant':62} {'sparse':>7} {'rel err':>7} {'PSNR':>6} {'acc':>5}")
    rows = []
    for start in range(0, steps, args.window):
        stop = min(start + args.window, steps)
        rows.append(evaluate("window", f"steps {start}-{stop - 1} sparse", all_layers(steps_in(start, stop)),
                             start=start, stop=stop))  # fmt: skip
    for start in range(0, steps, args.window):
        stop = min(start + args.window, steps)
        rows.append(evaluate("window+ps", f"steps {start}-{stop - 1} sparse, per-sample layers too",
                             all_layers(steps_in(start, stop), prunable), start=start, stop=stop))  # fmt: skip
    rows.append(evaluate("window+ps", "every step sparse, per-sample layers too", all_layers(steps_in(0, steps),
                                                                                              prunable)))  # fmt: skip
    for k in args.starts:
        rows.append(evaluate("dense-first", f"dense for the first {k} steps", all_layers(steps_in(k, steps)), k=k))
    for k in args.starts:
        if 0 < k <= steps // 2:  # beyond, the early steps' collapse is already complete
            rows.append(evaluate("sparse-first", f"sparse for the first {k} steps", all_layers(steps_in(0, k)), k=k))
    for start, stop in args.middles:
        rows.append(evaluate("middle", f"sparse at steps {start}-{stop - 1} only", all_layers(steps_in(start, stop)),
                             start=start, stop=stop))  # fmt: skip

    half = (steps + 1) // 2
    halves = {"early": steps_in(0, half), "late": steps_in(half, steps)}
    kinds: dict[str, list[str]] = {}
    for name in prunable:
        kinds.setdefault(layer_kind(name), []).append(name)
    for kind, names in kinds.items():
        for half_name, active in halves.items():
            rows.append(evaluate("kind", f"{kind} ({half_name})", {name: active for name in names}, kind=kind,
                                 half=half_name))  # fmt: skip

    calibration_sampler_labels = torch.arange(20) % 10
    calibration_sampler_noise = torch.randn(20, 1, 16, 16, generator=torch.Generator().manual_seed(3))

    def calibration_sampler(m):
        return sample(m, calibration_sampler_labels, calibration_sampler_noise, steps=steps)

    policies = [("one-step", target, lynx_compile.calibrate(model, calibration_calls, target=target,
                                                            options=pipeline_options, progress_bar=False))
                for target in args.targets]  # fmt: skip
    policies += [("trajectory", target, lynx_compile.calibrate(model, sampler=calibration_sampler, target=target,
                                                               options=pipeline_options, progress_bar=False))
                 for target in args.trajectory_targets]  # fmt: skip
    policy_spans = args.policy_spans or [(k, steps) for k in args.starts if k < steps - args.window] + [(10, 20)]
    for objective, target, policy in policies:
        chosen = [name for name, layer in policy.layers.items() if layer.decision == "sparse"]
        for start, stop in policy_spans:
            rows.append(evaluate("policy", f"{objective} {target}, sparse at steps {start}-{stop - 1}",
                                 {name: steps_in(start, stop) for name in chosen}, objective=objective,
                                 target=target, start=start, stop=stop,
                                 policy_share=sum(flop_shares[name] for name in chosen),
                                 calibrated_error=policy.model_error))  # fmt: skip

    result = {"date": time.strftime("%Y-%m-%d"), "machine": f"CPU, {os.cpu_count()} cores",
              "torch": torch.__version__, "command": "python " + " ".join(sys.argv),
              "args": vars(args) | {"json": str(args.json)}, "dense_class_accuracy": dense_accuracy,
              "halves": {name: [min(active), max(active)] for name, active in halves.items()},
              "prunable_share": sum(flop_shares[name] for name in prunable), "per_sample_layers": sorted(per_sample),
              "token_layer_share": sum(flop_shares[name] for name in token_layers), "one_step_errors": per_step,
              "rows": rows, "seconds": time.perf_counter() - started}  # fmt: skip
    print(f"{result['seconds']:.0f} s in all")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()

"""The drivers that run a model eagerly on calibration samples: `calibrate` (which layers to sparsify) and `fit_lora`
(their low-rank corrections). Both see the method through `method.sparse_linear_ref`, the reference the op runs.

`calibrate` measures, per linear, the relative output error of the sparsified layer on its captured inputs (with and
without norm compensation) and its share of linear FLOPs; then orders the layers by error per FLOP share (cheapest
quality for the most compute first) and takes the longest prefix of that order whose end-to-end relative error on
the model output stays within `target`, found by bisection over prefix length (error grows with the prefix in
practice; bisection costs log2(layers) model evaluations instead of one per layer). With ``lora_rank > 0`` every
measured layer also gets its closed-form low-rank correction (`lynx_compile.lora`), the order and the prefix are
taken with the corrections applied, and the chosen layers keep their adapters. With a `sampler`, the prefix is
judged by the error of the sampled result instead (`lynx_compile.trajectory`), the order staying the one-step one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from typing import Any, Callable, Iterable, Iterator

import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from ._version import __version__
from .checks import check_int, check_module, check_number, check_progress, names_of
from .config import LynxConfig, parse_options
from .eager import Call, as_calls, hooked, linears_of, relative_error, run_calls, run_sparsified, sparse_output
from .float8 import UNDER_AUTOCAST, is_float8_weight, weight_kind_reason
from .kernels.nm_prune import SUPPORTED_DTYPES
from .lora import DEFAULT_MEMORY_BUDGET, DEFAULT_RANK, LoraSolution, ResidualStatistics, solve_lora
from .method import Method
from .policy import LayerPolicy, Policy
from .progress import Progress
from .regions import register_model
from .trajectory import Sampler, Trajectory, check_sampler

logger = logging.getLogger(__name__)

# Bound on the relative L2 error of the model output vs dense, the largest over the calibration samples. On the
# project's trained tiny DiT 0.2 sparsifies 41% of linear FLOPs for 3 points of sample class accuracy (0.96 → 0.93);
# 0.05 sparsifies nothing there (benchmarks/RESULTS.md).
DEFAULT_TARGET = 0.2

def calibrate(
    model: torch.nn.Module,
    samples: Iterable[Any] | None = None,
    *,
    sampler: Sampler | None = None,
    options: dict[str, Any] | None = None,
    target: float = DEFAULT_TARGET,
    lora_rank: int = 0,
    ridge: float | None = None,
    progress: Callable[[str], None] | None = None,
    progress_bar: bool = True,
) -> Policy:
    """Measure each linear's sensitivity on `samples` and choose the layers to sparsify within `target`.

    `samples` are forward-call inputs (dicts of keyword arguments, tuples, or tensors) covering the timesteps and
    CFG branches the model will see. Deterministic: no randomness beyond the samples themselves. With `lora_rank`,
    every measured layer is fitted a correction of that rank first (`fit_lora`, with `ridge`: None cross-validates it)
    and the choice is made with the corrections on. A progress bar counts the model's forward calls
    (`progress_bar=False` hides it); `progress`, e.g. `print`, receives a line per stage and per model evaluation
    (also logged at INFO).

    What `target` bounds:
    - without `sampler` (one-step, the fast default): the relative L2 error of the model's output on `samples`, the
      largest over them — of its first tensor (`eager.first_tensor`: a diffusers model's sample; a model returning
      several tensors has the others unbounded). Costs one pass over the samples to measure, then at most
      ceil(log2(L + 1)) more (L: the layers measured) for the bisection over the prefix.
    - with ``sampler=sample``, ``sample(model) -> tensor`` what the user samples with (a closure running the
      scheduler loop from fixed noise, steps and guidance; `pipeline_sampler` makes one of a diffusers pipeline):
      the relative L2 error of its result against its result with the dense model (`lynx_compile.trajectory`).
      The layers are ordered as in one-step mode, from their one-step errors on `samples` (default: the model calls
      the sampler makes with the dense model, captured), and the longest prefix of that order whose *sampled* error
      stays within `target` is found by bisection, with the LoRA corrections applied when `lora_rank` is set, so
      the chosen policy samples within `target` on this sampler. Costs 2 dense sampler runs (the reference and a
      check that the sampler is deterministic) and at most ceil(log2(L + 1)) sparsified ones, besides the pass over
      `samples` (and the LoRA fit's passes). The sampler must run the module it is given eagerly, with fixed noise;
      `target` must be > 0. The policy records the sampled error as `model_error` and, in `sampled`, its PSNR
      against the dense result (the peak being that result's range) and the sampler runs made.

    `options` are the lynx options the policy will be compiled with: their method settings (n, m, norm
    compensation, min_tokens) are measured and recorded in the policy (compiling with other ones is refused), and
    layers their `include`/`exclude` keep dense are recorded dense with that reason and never take any of the
    error budget. Arguments are checked before the model runs; a sample whose dense output is not finite is an error
    (its relative errors would be NaN, and every layer would silently stay dense).

    Calibrate the whole model, however it will be compiled: the policy names every layer by its full name, which
    whole-model and regional compilation (`lynx_compile.compile_repeated_blocks`) both decide by. The model is
    remembered (weakly), so that a graph of one of its blocks compiled later in this process can be placed in it.
    """
    check_module("calibrate", model)
    check_progress(progress, progress_bar)
    if sampler is not None:
        check_sampler(sampler)
    # A sampled result is never exactly reproducible on every device, so a zero bound on it would be noise.
    check_number("target", target, minimum=0, above=sampler is not None)
    check_int("lora_rank", lora_rank, 0)
    if ridge is not None:
        check_number("ridge", ridge, minimum=0)
    config = parse_options(options)
    if samples is None and sampler is None:
        raise ValueError("calibrate needs samples, or a sampler whose model calls serve as samples")
    calls = None if samples is None else as_calls(samples, "calibrate")
    model = _uncompiled(model)
    register_model(model)  # its policy names its layers: lynx may place a block's graph in it (`regions`)
    bar = Progress("calibrate", progress, progress_bar)
    try:
        with _running_eagerly(), _in_eval_mode(model):
            trajectory = None
            if sampler is not None:
                bar.stage("running the sampler with the dense model (twice: the reference, and a determinism check)")
                trajectory = Trajectory(model, sampler, target, bar, capture=calls is None)
                calls = calls if calls is not None else trajectory.captured
            return _calibrate(model, calls, config, target, lora_rank, ridge, bar, trajectory)
    finally:
        bar.close()


def _uncompiled(model: torch.nn.Module) -> torch.nn.Module:
    """The module `torch.compile` wrapped (whose layers are named without the wrapper's ``_orig_mod.``), or `model`."""
    return model._orig_mod if isinstance(model, torch._dynamo.eval_frame.OptimizedModule) else model


@contextlib.contextmanager
def _in_eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """The model in eval mode for the block, each module's mode restored after: calibration measures inference, and
    a module in training mode (dropout, batch norm updating its statistics) would make it neither deterministic nor
    leave the model as it found it."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@contextlib.contextmanager
def _running_eagerly() -> Iterator[None]:
    """Calibration measures through hooks on the model's linears, and compiled code (a module compiled in place, its
    blocks compiled one by one) runs past hooks added after it was compiled — its layers would measure nothing, and
    its "dense" reference would be its compiled output: so the model runs eagerly here, whatever was compiled."""
    with torch.compiler.set_stance("force_eager"):
        yield


def _tied_weights(linears: dict[str, torch.nn.Linear]) -> dict[str, str]:
    """The linears whose weight another linear holds too, each with the reason compiling gives."""
    holders: dict[int, list[str]] = {}
    for name, module in linears.items():
        holders.setdefault(id(module.weight), []).append(name)
    return {name: f"its weight is tied to that of {', '.join(repr(other) for other in names if other != name)}"
            for names in holders.values() if len(names) > 1 for name in names}  # fmt: skip


def _calibrate(model: torch.nn.Module, calls: list[Call], config: LynxConfig, target: float, lora_rank: int,
               ridge: float | None, progress: Progress, trajectory: Trajectory | None) -> Policy:  # fmt: skip
    report = progress.stage
    method, bare = config.method, dataclasses.replace(config.method, norm_compensation=False)
    linears = linears_of(model)
    kept_dense = {name: why for name in linears if (why := config.name_rule(name)) is not None}
    for name, module in linears.items():
        if name not in kept_dense and min(module.in_features, module.out_features) < config.min_features:
            # Compiling keeps such a layer dense whatever the policy says (passes/decide_linears.py, the same
            # words): measured as sparse, it would spend budget on an error the compiled model never makes.
            kept_dense[name] = (f"features K={module.in_features}, N={module.out_features} < "
                                f"min_features={config.min_features}")  # fmt: skip
    for name, module in linears.items():
        if type(module).forward is not torch.nn.Linear.forward:
            # its hooks would replace the whole output by the pruned F.linear, and drop the rest of its forward
            kept_dense.setdefault(name, f"{type(module).__name__}: an nn.Linear subclass with a forward of its own, "
                                        "which calibration cannot measure as the compiled model runs it")
    for name, module in linears.items():
        # compiling keeps these dense too (the same words): a float8 weight lynx's FP8 kernels cannot take, another
        # tensor subclass (torchao's int8 / int4 weights, DTensor), which runs its own kernels
        if (why := weight_kind_reason(module.weight)) is not None:
            kept_dense.setdefault(name, why)
    for name, why in _tied_weights(linears).items():
        # compiling with a policy keeps a layer whose weight another one shares dense (passes/find_linears.py):
        # Dynamo names every use of the weight after one of them
        kept_dense.setdefault(name, f"qualified name not recoverable: {why}")

    # Per layer: its output error on the inputs the dense model gives it (with norm compensation and without), its
    # output energy, its FLOPs.
    flops: dict[str, int] = {}
    totals: dict[str, list[float]] = {}

    def measure(name: str) -> Callable:
        def hook(module: torch.nn.Linear, args: tuple, out: torch.Tensor) -> None:
            x = args[0]
            flops[name] = flops.get(name, 0) + 2 * x.numel() * module.out_features
            if name not in kept_dense and out.dtype not in SUPPORTED_DTYPES:  # the dtype it computes in (autocast's)
                kept_dense[name] = f"dtype {out.dtype} unsupported"  # as compiling words it
            if name not in kept_dense and is_float8_weight(module.weight) and torch.is_autocast_enabled(x.device.type):
                kept_dense[name] = UNDER_AUTOCAST
            if name in kept_dense:
                return
            with_norm, without = (sparse_output(module, x, m, None) for m in (method, bare))
            if with_norm is None:
                return
            acc = totals.setdefault(name, [0.0, 0.0, 0.0])
            acc[0] += (with_norm.double() - out.double()).square().sum().item()
            acc[1] += (without.double() - out.double()).square().sum().item()
            acc[2] += out.double().square().sum().item()

        return hook

    report(f"measuring {len(linears)} linears on {len(calls)} sample(s)")
    progress.expect(len(calls))
    with hooked(linears, measure):
        references = run_calls(model, calls, progress)
    for index, reference in enumerate(references):
        if not bool(torch.isfinite(reference).all()):
            raise ValueError(f"calibrate: sample {index}: the dense model's output holds NaN or Inf; calibration "
                             "measures errors relative to it, so every sample must give a finite output")
    errors = {name: ((norm / max(energy, 1e-30)) ** 0.5, (plain / max(energy, 1e-30)) ** 0.5)
              for name, (norm, plain, energy) in totals.items()}  # fmt: skip
    not_finite = sorted(name for name, pair in errors.items() if not all(map(math.isfinite, pair)))
    if not_finite:
        logger.warning("lynx.calibrate: %d layer(s) have a non-finite error on the samples and stay dense: %s",
                       len(not_finite), ", ".join(not_finite[:5]))  # fmt: skip
        errors = {name: pair for name, pair in errors.items() if name not in not_finite}

    solutions = {}
    if lora_rank:
        fitted = [name for name in sorted(errors) if not is_traceable_wrapper_subclass(linears[name].weight)]
        report(f"fitting rank-{lora_rank} corrections of {len(fitted)} layers")
        solutions = fit_lora_on_calls(model, calls, config, rank=lora_rank, layers=fitted, ridge=ridge,
                                      memory_budget=DEFAULT_MEMORY_BUDGET, progress=progress)  # fmt: skip
    adapters = {name: solution.adapter_at(lora_rank) for name, solution in solutions.items()}

    def ordering_error(name: str) -> float:
        return solutions[name].error_at(lora_rank) if name in solutions else errors[name][0]

    total_flops = sum(flops.values()) or 1
    candidates = sorted(errors, key=lambda name: (ordering_error(name) / (flops[name] / total_flops), name))

    prefix_errors = {0: 0.0}
    prefix_psnr = {0: math.inf}

    def model_error(prefix: int) -> float:
        if prefix not in prefix_errors:
            chosen = {name: linears[name] for name in candidates[:prefix]}
            if trajectory is None:
                outs = run_sparsified(model, calls, chosen, method, adapters, progress)
                prefix_errors[prefix] = max(relative_error(out, ref) for out, ref in zip(outs, references))
            else:
                prefix_errors[prefix], prefix_psnr[prefix] = trajectory.error(chosen, method, adapters)
        return prefix_errors[prefix]

    low, high = 0, len(candidates)  # the longest prefix within target, by bisection
    evaluation_calls = len(calls) if trajectory is None else trajectory.calls_per_run
    progress.expect(math.ceil(math.log2(len(candidates) + 1)) * evaluation_calls)  # at most that many evaluations
    sampled_word = "" if trajectory is None else " sampled"
    while low < high:
        mid = (low + high + 1) // 2
        if model_error(mid) <= target:
            low = mid
        else:
            high = mid - 1
        report(f"{low} to {high} of {len(candidates)} layers fit the target (tried {mid}:{sampled_word} "
               f"{model_error(mid):.4f})")  # fmt: skip
    chosen = set(candidates[:low])
    bounded = "" if trajectory is None else " on the sampled result"

    layers = {}
    for name in linears:
        if name not in flops:
            continue  # not called on these samples
        share = flops[name] / total_flops
        if name in kept_dense:
            layers[name] = LayerPolicy("dense", kept_dense[name], None, None, share)
            continue
        if name in not_finite:
            layers[name] = LayerPolicy("dense", "non-finite error on the samples", None, None, share)
            continue
        if name not in errors:
            layers[name] = LayerPolicy("dense", "never prunable on the samples (tokens or K)", None, None, share)
            continue
        error, error_bare = errors[name]
        measured = f"error {error:.4f}"
        if name in solutions and solutions[name].rank:
            measured += f", {solutions[name].error_at(lora_rank):.4f} with rank-{solutions[name].rank} LoRA"
        elif name in solutions:
            measured += " (LoRA: no ridge helped held-out tokens, uncorrected)"
        reason = (f"within target {target}{bounded}: {measured}" if name in chosen
                  else f"outside the prefix that meets target {target}{bounded}: {measured}")  # fmt: skip
        layers[name] = LayerPolicy("sparse" if name in chosen else "dense", reason, error, error_bare, share)
    sampled = None
    if trajectory is not None:
        psnr = prefix_psnr[low]
        sampled = {"psnr_db": psnr if math.isfinite(psnr) else None, "sampler_runs": trajectory.runs}
    policy = Policy(layers, type(model).__name__, __version__, method.to_dict(), target, model_error(low),
                    sampled=sampled)  # fmt: skip
    return policy.with_lora({name: solutions[name] for name in chosen if name in solutions}, lora_rank)


# ---- the LoRA fit's driver ---------------------------------------------------------------------------------------


def collect_statistics(
    model: torch.nn.Module,
    calls: list[Call],
    layers: dict[str, torch.nn.Linear],
    method: Method,
    progress: Progress | None = None,
) -> dict[str, ResidualStatistics]:
    """Run the dense model over `calls` once, accumulating the statistics of every layer in `layers` it calls."""
    stats: dict[str, ResidualStatistics] = {}

    def capture(name: str) -> Callable:
        def hook(module: torch.nn.Linear, args: tuple, out: torch.Tensor) -> None:
            rows = args[0].reshape(-1, module.in_features)
            if not method.prunes(rows.shape[0], module.in_features):
                return  # never pruned at run time, nothing to correct
            entry = stats.setdefault(name, ResidualStatistics(module.in_features, rows.device))
            entry.add(rows, out.reshape(-1, module.out_features), module.weight, method)

        return hook

    with hooked(layers, capture):
        run_calls(model, calls, progress)
    return stats


def fit_lora(
    model: torch.nn.Module,
    samples: Iterable[Any],
    *,
    rank: int = DEFAULT_RANK,
    layers: Iterable[str] | None = None,
    options: dict[str, Any] | None = None,
    ridge: float | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    progress: Callable[[str], None] | None = None,
    progress_bar: bool = True,
) -> dict[str, LoraSolution]:
    """Fit the rank-`rank` correction of each named linear (default: every nn.Linear) on `samples`.

    `samples` are forward-call inputs, as for `calibrate`; `options` the lynx options the layers will run with
    (n, m, norm_compensation, min_tokens); `ridge` a fixed λ (see `lora.solve_lora`), None to cross-validate it.
    Layers are processed in groups whose statistics fit `memory_budget` bytes (32·K² each), one pass over the samples
    per group. Layers the samples never call with enough tokens get no solution. Apply the result with
    `Policy.with_lora`. Progress: a bar over the model calls (`progress_bar=False` hides it) and, to `progress`
    (e.g. `print`), a line per group.
    """
    check_module("fit_lora", model)
    check_progress(progress, progress_bar)
    check_int("rank", rank, 1)
    if ridge is not None:
        check_number("ridge", ridge, minimum=0)
    check_int("memory_budget", memory_budget, 1)
    calls = as_calls(samples, "fit_lora")
    bar = Progress("fit_lora", progress, progress_bar)
    try:
        with _running_eagerly(), _in_eval_mode(model):
            return fit_lora_on_calls(_uncompiled(model), calls, parse_options(options), rank=rank, layers=layers,
                                     ridge=ridge, memory_budget=memory_budget, progress=bar)  # fmt: skip
    finally:
        bar.close()


def fit_lora_on_calls(
    model: torch.nn.Module,
    calls: list[Call],
    config: LynxConfig,
    *,
    rank: int,
    layers: Iterable[str] | None,
    ridge: float | None,
    memory_budget: int,
    progress: Progress,
) -> dict[str, LoraSolution]:
    """`fit_lora` on (args, kwargs) pairs and a parsed `LynxConfig`. Layers over a quantized weight (torchao's float8,
    int8, int4: a tensor subclass) get no correction (lynx does not run one on them): skipped by default, refused
    when named."""
    linears = linears_of(model)
    subclass = {name for name, module in linears.items() if is_traceable_wrapper_subclass(module.weight)}
    names = [name for name in linears if name not in subclass] if layers is None else list(names_of(layers))
    missing = [name for name in names if name not in linears]
    if missing:
        raise ValueError(f"fit_lora: not nn.Linear modules of this model: {missing[:5]}")
    quantized = [name for name in names if name in subclass]
    if quantized:
        kinds = sorted({type(linears[name].weight).__name__ for name in quantized})
        raise ValueError(f"fit_lora: layers whose weight is a tensor subclass ({', '.join(kinds)}: torchao's quantized "
                         f"weights, DTensor) take no LoRA correction (lynx does not run one on them): "
                         f"{quantized[:5]}")  # fmt: skip
    groups: list[list[str]] = [[]]
    group_bytes = 0
    for name in names:
        size = ResidualStatistics.nbytes(linears[name].in_features)
        if groups[-1] and group_bytes + size > memory_budget:
            groups.append([])
            group_bytes = 0
        groups[-1].append(name)
        group_bytes += size

    solutions: dict[str, LoraSolution] = {}
    progress.expect(len(groups) * len(calls))
    for index, group in enumerate(groups):
        stats = collect_statistics(model, calls, {name: linears[name] for name in group}, config.method, progress)
        for name, layer_stats in stats.items():
            if not layer_stats.finite():
                raise ValueError(f"fit_lora: the inputs of {name!r} over the samples hold NaN or Inf (a sample's own, "
                                 "or what the model computed from it): fit on samples the dense model runs finitely")
            solutions[name] = solve_lora(linears[name].weight, layer_stats, rank, ridge)
        progress.stage(f"group {index + 1}/{len(groups)}: {len(stats)} layer(s) fitted at rank {rank}")
        del stats
    return solutions

"""Sparsity policy: which linears to sparsify, decided by measurement (`calibrate`) and saved as readable JSON.

A `Policy` maps each linear's qualified name to a decision, the reason for it and the numbers measured on the
calibration samples. It is applied with ``torch.compile(model, backend="lynx", options={"policy": policy_or_path})``:
a layer the policy marks dense stays dense; a layer it marks sparse goes through lynx's usual rules (dtype, shape,
and on the sparse path the measured speed rule, which wins). A layer the policy does not name stays dense, and a
policy naming layers the model lacks is reported with a warning.

`calibrate` measures, per linear, the relative output error of the sparsified layer on its captured inputs (with and
without norm compensation) and its share of linear FLOPs; then orders the layers by error per FLOP share (cheapest
quality for the most compute first) and takes the longest prefix of that order whose end-to-end relative error on
the model output stays within `target`, found by bisection over prefix length (error grows with the prefix in
practice; bisection costs log2(layers) model evaluations instead of one per layer).
"""

from __future__ import annotations

import fnmatch
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from .kernels.nm_prune import nm_prune_ref

logger = logging.getLogger(__name__)

# Bound on the relative L2 error of the model output vs dense, the largest over the calibration samples. On the
# project's trained tiny DiT 0.2 sparsifies 41% of linear FLOPs for 3 points of sample class accuracy (0.96 → 0.93);
# 0.05 sparsifies nothing there (benchmarks/RESULTS.md).
DEFAULT_TARGET = 0.2


@dataclass(frozen=True)
class LayerPolicy:
    decision: str  # "sparse" | "dense"
    reason: str
    error: float | None = None  # relative output error of the layer alone, with norm compensation
    error_without_norm: float | None = None
    flop_share: float | None = None


@dataclass
class Policy:
    layers: dict[str, LayerPolicy] = field(default_factory=dict)
    model_class: str = ""
    lynx_version: str = ""
    options: dict[str, Any] = field(default_factory=dict)  # the lynx options it was calibrated with
    target: float | None = None
    model_error: float | None = None  # end-to-end relative error with the sparse layers, on the calibration samples

    def decision_for(self, name: str) -> LayerPolicy | None:
        return self.layers.get(name)

    def with_overrides(self, overrides: dict[str, str]) -> Policy:
        """A copy where every layer matching a glob takes that decision, reported as an override."""
        layers = dict(self.layers)
        for pattern, decision in overrides.items():
            if decision not in ("sparse", "dense"):
                raise ValueError(f"override decision must be 'sparse' or 'dense', got {decision!r}")
            for name, layer in layers.items():
                if fnmatch.fnmatchcase(name, pattern):
                    layers[name] = LayerPolicy(decision, f"override {pattern!r}", layer.error,
                                               layer.error_without_norm, layer.flop_share)  # fmt: skip
        return Policy(layers, self.model_class, self.lynx_version, self.options, self.target, self.model_error)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Policy:
        data = json.loads(text)
        data["layers"] = {name: LayerPolicy(**layer) for name, layer in data["layers"].items()}
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        return cls.from_json(Path(path).read_text())


def as_policy(value: Policy | str | Path | None) -> Policy | None:
    if value is None or isinstance(value, Policy):
        return value
    return Policy.load(value)


# ---- calibration -------------------------------------------------------------------------------------------------


def _relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


class _Pruning:
    """Forward pre-hooks that feed chosen nn.Linear modules s·x̃ (or x̃) instead of x: the method, in eager."""

    def __init__(self, modules: dict[str, torch.nn.Linear], n: int, m: int, norm: bool, min_tokens: int):
        self.modules, self.n, self.m, self.norm, self.min_tokens = modules, n, m, norm, min_tokens

    def prune(self, x: torch.Tensor) -> torch.Tensor | None:
        rows = x.reshape(-1, x.shape[-1])
        if rows.shape[0] < self.min_tokens or x.shape[-1] % self.m:
            return None
        pruned, scale = nm_prune_ref(rows, self.n, self.m)
        compensated = (pruned.float() * scale[:, None]).to(x.dtype) if self.norm else pruned
        return compensated.reshape(x.shape)

    def run(self, model: torch.nn.Module, samples: list[tuple[tuple, dict]], names: Iterable[str]) -> list:
        def hook(module, args):
            pruned = self.prune(args[0])
            return None if pruned is None else (pruned, *args[1:])

        handles = [self.modules[name].register_forward_pre_hook(hook) for name in names]
        try:
            with torch.no_grad():
                return [_first_tensor(model(*args, **kwargs)) for args, kwargs in samples]
        finally:
            for handle in handles:
                handle.remove()


def _first_tensor(out: Any) -> torch.Tensor:
    while not isinstance(out, torch.Tensor):
        out = out[0] if isinstance(out, (tuple, list)) else out.sample
    return out


def _as_call(sample: Any) -> tuple[tuple, dict]:
    """A sample is a dict of keyword arguments, a tuple of positional ones, or a single tensor."""
    if isinstance(sample, dict):
        return (), sample
    if isinstance(sample, tuple):
        return sample, {}
    return (sample,), {}


def calibrate(
    model: torch.nn.Module,
    samples: Iterable[Any],
    *,
    options: dict[str, Any] | None = None,
    target: float = DEFAULT_TARGET,
    progress: Callable[[str], None] | None = None,
) -> Policy:
    """Measure each linear's sensitivity on `samples` and choose the layers to sparsify within `target`.

    `samples` are forward-call inputs (dicts of keyword arguments, tuples, or tensors) covering the timesteps and
    CFG branches the model will see. Deterministic: no randomness beyond the samples themselves. `progress`, e.g.
    `print`, receives a line per stage and per model evaluation (also logged at INFO).
    """

    def report(line: str) -> None:
        logger.info("lynx.calibrate: %s", line)
        if progress is not None:
            progress(f"calibrate: {line}")

    from . import __version__
    from .config import parse_options

    config = parse_options(options)
    calls = [_as_call(sample) for sample in samples]
    if not calls:
        raise ValueError("calibrate needs at least one sample")
    linears = {name: mod for name, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)}
    pruning = _Pruning(linears, config.n, config.m, config.norm_compensation, config.min_tokens)
    bare = _Pruning(linears, config.n, config.m, False, config.min_tokens)

    # Per layer: its inputs as the dense model produces them, the layer's own output error, its FLOPs.
    errors: dict[str, tuple[float, float]] = {}
    flops: dict[str, int] = {}
    totals: dict[str, list[float]] = {}

    def measure(name):
        def hook(module, args, out):
            x = args[0]
            flops[name] = flops.get(name, 0) + 2 * x.numel() * module.out_features
            for key, prune in (("norm", pruning), ("bare", bare)):
                pruned = prune.prune(x)
                if pruned is None:
                    continue
                sq_err = (torch.nn.functional.linear(pruned, module.weight, module.bias).double() - out.double())
                acc = totals.setdefault(name, [0.0, 0.0, 0.0])
                acc[0 if key == "norm" else 1] += sq_err.square().sum().item()
                if key == "norm":
                    acc[2] += out.double().square().sum().item()

        return hook

    report(f"measuring {len(linears)} linears on {len(calls)} sample(s)")
    handles = [mod.register_forward_hook(measure(name)) for name, mod in linears.items()]
    try:
        with torch.no_grad():
            references = [_first_tensor(model(*args, **kwargs)) for args, kwargs in calls]
    finally:
        for handle in handles:
            handle.remove()
    for name, (err_norm, err_bare, energy) in totals.items():
        errors[name] = ((err_norm / max(energy, 1e-30)) ** 0.5, (err_bare / max(energy, 1e-30)) ** 0.5)

    total_flops = sum(flops.values()) or 1
    candidates = sorted(errors, key=lambda name: (errors[name][0] / (flops[name] / total_flops), name))

    prefix_errors = {0: 0.0}

    def model_error(prefix: int) -> float:
        if prefix not in prefix_errors:
            outs = pruning.run(model, calls, candidates[:prefix])
            prefix_errors[prefix] = max(_relative_error(out, ref) for out, ref in zip(outs, references))
        return prefix_errors[prefix]

    low, high = 0, len(candidates)  # the longest prefix within target, by bisection
    while low < high:
        mid = (low + high + 1) // 2
        if model_error(mid) <= target:
            low = mid
        else:
            high = mid - 1
        report(f"{low} to {high} of {len(candidates)} layers fit the target (tried {mid}: {model_error(mid):.4f})")
    chosen = set(candidates[:low])

    layers = {}
    for name in linears:
        if name not in flops:
            continue  # not called on these samples
        share = flops[name] / total_flops
        if name not in errors:
            layers[name] = LayerPolicy("dense", "never prunable on the samples (tokens or K)", None, None, share)
            continue
        error, error_bare = errors[name]
        reason = (f"within target {target}: error {error:.4f}" if name in chosen
                  else f"outside the prefix that meets target {target}: error {error:.4f}")  # fmt: skip
        layers[name] = LayerPolicy("sparse" if name in chosen else "dense", reason, error, error_bare, share)
    method = {"n": config.n, "m": config.m, "norm_compensation": config.norm_compensation,
              "min_tokens": config.min_tokens}  # the options the measurements depend on  # fmt: skip
    return Policy(layers, type(model).__name__, __version__, method, target, model_error(low))

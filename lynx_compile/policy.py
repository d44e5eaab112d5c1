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
practice; bisection costs log2(layers) model evaluations instead of one per layer). With ``lora_rank > 0`` every
measured layer also gets its closed-form low-rank correction (`lynx_compile.lora`), the order and the prefix are
taken with the corrections applied, and the chosen layers keep their adapters.

A policy with adapters saves as two files: the JSON, and ``<same stem>.safetensors`` beside it holding
``<layer>.lora_a`` (N × r) and ``<layer>.lora_b`` (r × K); each layer's ``lora_rank`` in the JSON says how many of
the stored directions it uses (0: no correction), so editing it down needs no refit.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from .kernels.nm_prune import nm_prune_ref
from .lora import DEFAULT_MEMORY_BUDGET, LoraAdapter, LoraSolution, fit_lora_on_calls

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
    lora_rank: int = 0  # directions of the stored adapter the layer uses; 0: no low-rank correction
    error_with_lora: float | None = None  # the layer's error with norm compensation and that correction


@dataclass
class Policy:
    layers: dict[str, LayerPolicy] = field(default_factory=dict)
    model_class: str = ""
    lynx_version: str = ""
    options: dict[str, Any] = field(default_factory=dict)  # the lynx options it was calibrated with
    target: float | None = None
    model_error: float | None = None  # end-to-end relative error with the sparse layers, on the calibration samples
    # Fitted corrections by layer name (fp32, CPU), saved beside the JSON; not part of the JSON or of equality.
    adapters: dict[str, LoraAdapter] = field(default_factory=dict, repr=False, compare=False)

    def decision_for(self, name: str) -> LayerPolicy | None:
        return self.layers.get(name)

    def adapter_for(self, name: str) -> LoraAdapter | None:
        """The correction a layer runs with (its stored adapter cut to its `lora_rank`), or None."""
        layer = self.layers.get(name)
        if layer is None or layer.lora_rank == 0:
            return None
        return self.adapters[name].truncated(layer.lora_rank)

    def check_adapters(self) -> None:
        """Raise ValueError where a layer asks for more correction than its stored adapter holds."""
        for name, layer in self.layers.items():
            if layer.lora_rank < 0:
                raise ValueError(f"policy: layer {name!r} has lora_rank {layer.lora_rank} < 0")
            if layer.lora_rank == 0:
                continue
            stored = self.adapters.get(name)
            if stored is None:
                raise ValueError(f"policy: layer {name!r} uses a rank-{layer.lora_rank} LoRA correction but no "
                                 "adapter is loaded for it (load the policy with Policy.load next to its "
                                 ".safetensors file)")  # fmt: skip
            if stored.rank < layer.lora_rank:
                raise ValueError(f"policy: layer {name!r} asks for lora_rank {layer.lora_rank}, its adapter has "
                                 f"rank {stored.rank}")  # fmt: skip

    def _replace(self, layers: dict[str, LayerPolicy], adapters: dict[str, LoraAdapter] | None = None) -> Policy:
        return dataclasses.replace(self, layers=layers, adapters=dict(self.adapters if adapters is None else adapters))

    def with_overrides(self, overrides: dict[str, str]) -> Policy:
        """A copy where every layer matching a glob takes that decision, reported as an override."""
        layers = dict(self.layers)
        for pattern, decision in overrides.items():
            if decision not in ("sparse", "dense"):
                raise ValueError(f"override decision must be 'sparse' or 'dense', got {decision!r}")
            for name, layer in layers.items():
                if fnmatch.fnmatchcase(name, pattern):
                    layers[name] = dataclasses.replace(layer, decision=decision, reason=f"override {pattern!r}")
        return self._replace(layers)

    def with_lora(self, solutions: dict[str, LoraSolution], rank: int) -> Policy:
        """A copy where each layer with a solution runs its rank-`rank` correction (0 removes corrections)."""
        layers, adapters = dict(self.layers), dict(self.adapters)
        for name, solution in solutions.items():
            if name not in layers:
                raise ValueError(f"with_lora: layer {name!r} is not in the policy")
            used = min(rank, solution.rank)
            layers[name] = dataclasses.replace(layers[name], lora_rank=used,
                                               error_with_lora=solution.error_at(used) if used else None)  # fmt: skip
            if used:
                adapters[name] = solution.adapter_at(used).to("cpu", torch.float32)
            else:
                adapters.pop(name, None)
        return self._replace(layers, adapters)

    def without_lora(self) -> Policy:
        """A copy with every correction removed."""
        layers = {name: dataclasses.replace(layer, lora_rank=0, error_with_lora=None)
                  for name, layer in self.layers.items()}  # fmt: skip
        return self._replace(layers, {})

    def to_dict(self) -> dict[str, Any]:
        """Everything but the adapter tensors, as plain data."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "adapters"}
        data["layers"] = {name: dataclasses.asdict(layer) for name, layer in self.layers.items()}
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, adapters: dict[str, LoraAdapter] | None = None) -> Policy:
        data = json.loads(text)
        data["layers"] = {name: LayerPolicy(**layer) for name, layer in data["layers"].items()}
        return cls(**data, adapters=dict(adapters or {}))

    def save(self, path: str | Path) -> None:
        """Write the JSON to `path` and, when there are adapters, ``path.with_suffix(".safetensors")``."""
        path = Path(path)
        used = {name: adapter for name, adapter in self.adapters.items()
                if name in self.layers and self.layers[name].lora_rank}  # fmt: skip
        if used:
            from safetensors.torch import save_file

            tensors = {}
            for name, adapter in sorted(used.items()):
                tensors[f"{name}.lora_a"] = adapter.a.detach().to("cpu", torch.float32).contiguous()
                tensors[f"{name}.lora_b"] = adapter.b.detach().to("cpu", torch.float32).contiguous()
            save_file(tensors, str(adapters_path(path)))
        path.write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        path = Path(path)
        adapters = {}
        if adapters_path(path).exists():
            from safetensors.torch import load_file

            tensors = load_file(str(adapters_path(path)))
            for key in tensors:
                if key.endswith(".lora_a"):
                    name = key.removesuffix(".lora_a")
                    adapters[name] = LoraAdapter(tensors[key], tensors[f"{name}.lora_b"])
        policy = cls.from_json(path.read_text(), adapters)
        policy.check_adapters()
        return policy


def adapters_path(policy_path: str | Path) -> Path:
    """Where the adapters of the policy saved at `policy_path` live."""
    return Path(policy_path).with_suffix(".safetensors")


def as_policy(value: Policy | str | Path | None) -> Policy | None:
    if value is None:
        return None
    policy = value if isinstance(value, Policy) else Policy.load(value)
    policy.check_adapters()
    return policy


# ---- calibration -------------------------------------------------------------------------------------------------


def _relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


class _Pruning:
    """Hooks that feed chosen nn.Linear modules s·x̃ (or x̃) instead of x, plus any correction (x·Bᵀ)·Aᵀ of the dense
    x: the method, in eager."""

    def __init__(self, modules: dict[str, torch.nn.Linear], n: int, m: int, norm: bool, min_tokens: int):
        self.modules, self.n, self.m, self.norm, self.min_tokens = modules, n, m, norm, min_tokens

    def prune(self, x: torch.Tensor) -> torch.Tensor | None:
        rows = x.reshape(-1, x.shape[-1])
        if rows.shape[0] < self.min_tokens or x.shape[-1] % self.m:
            return None
        pruned, scale = nm_prune_ref(rows, self.n, self.m)
        compensated = (pruned.float() * scale[:, None]).to(x.dtype) if self.norm else pruned
        return compensated.reshape(x.shape)

    def run(
        self,
        model: torch.nn.Module,
        samples: list[tuple[tuple, dict]],
        names: Iterable[str],
        adapters: dict[str, LoraAdapter] | None = None,
    ) -> list:
        names = list(names)
        corrections = {self.modules[name]: adapters[name] for name in names if adapters and name in adapters}
        dense_inputs: dict[torch.nn.Module, torch.Tensor] = {}

        def prune(module, args):
            pruned = self.prune(args[0])
            if pruned is None:
                return None  # the layer runs dense, uncorrected, as lynx::sparse_linear does
            dense_inputs[module] = args[0]
            return (pruned, *args[1:])

        def correct(module, args, out):
            x = dense_inputs.pop(module, None)
            return None if x is None else out + corrections[module].correction(x).to(out.dtype)

        handles = [self.modules[name].register_forward_pre_hook(prune) for name in names]
        handles += [module.register_forward_hook(correct) for module in corrections]
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
    lora_rank: int = 0,
    ridge: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> Policy:
    """Measure each linear's sensitivity on `samples` and choose the layers to sparsify within `target`.

    `samples` are forward-call inputs (dicts of keyword arguments, tuples, or tensors) covering the timesteps and
    CFG branches the model will see. Deterministic: no randomness beyond the samples themselves. With `lora_rank`,
    every measured layer is fitted a correction of that rank first (`fit_lora`, with `ridge`: None cross-validates it)
    and the choice is made with the corrections on. `progress`, e.g. `print`, receives a line per stage and per
    model evaluation (also logged at INFO).
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

    solutions = {}
    if lora_rank:
        report(f"fitting rank-{lora_rank} corrections of {len(errors)} layers")
        solutions = fit_lora_on_calls(model, calls, config, rank=lora_rank, layers=sorted(errors), ridge=ridge,
                                      memory_budget=DEFAULT_MEMORY_BUDGET, progress=report)  # fmt: skip
    adapters = {name: solution.adapter_at(lora_rank) for name, solution in solutions.items()}

    def ordering_error(name: str) -> float:
        return solutions[name].error_at(lora_rank) if name in solutions else errors[name][0]

    total_flops = sum(flops.values()) or 1
    candidates = sorted(errors, key=lambda name: (ordering_error(name) / (flops[name] / total_flops), name))

    prefix_errors = {0: 0.0}

    def model_error(prefix: int) -> float:
        if prefix not in prefix_errors:
            outs = pruning.run(model, calls, candidates[:prefix], adapters)
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
        measured = f"error {error:.4f}"
        if name in solutions and solutions[name].rank:
            measured += f", {solutions[name].error_at(lora_rank):.4f} with rank-{solutions[name].rank} LoRA"
        elif name in solutions:
            measured += " (LoRA: no ridge helped held-out tokens, uncorrected)"
        reason = (f"within target {target}: {measured}" if name in chosen
                  else f"outside the prefix that meets target {target}: {measured}")  # fmt: skip
        layers[name] = LayerPolicy("sparse" if name in chosen else "dense", reason, error, error_bare, share)
    method = {"n": config.n, "m": config.m, "norm_compensation": config.norm_compensation,
              "min_tokens": config.min_tokens}  # the options the measurements depend on  # fmt: skip
    policy = Policy(layers, type(model).__name__, __version__, method, target, model_error(low))
    return policy.with_lora({name: solutions[name] for name in chosen if name in solutions}, lora_rank)

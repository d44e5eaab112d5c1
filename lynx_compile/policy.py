"""Sparsity policy: which linears to sparsify, decided by measurement (`lynx_compile.calibrate`), as readable JSON.

A `Policy` maps each linear's qualified name to a decision, the reason for it and the numbers measured on the
calibration samples. It is applied with ``torch.compile(model, backend="lynx", options={"policy": policy_or_path})``:
a layer the policy marks dense stays dense; a layer it marks sparse goes through lynx's usual rules (dtype, shape,
and on the sparse path the measured speed rule, which wins). A layer the policy does not name stays dense, and a
policy naming layers the model lacks is reported with a warning. A policy may also carry the speed rule's
measurements (`with_measurements`), so that another process or rank decides the same without timing again.

A policy with adapters saves as two files: the JSON, and ``<same stem>.safetensors`` beside it holding
``<layer>.lora_a`` (N × r) and ``<layer>.lora_b`` (r × K); each layer's ``lora_rank`` in the JSON says how many of
the stored directions it uses (0: no correction), so editing it down needs no refit.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from .lora import LoraAdapter, LoraSolution


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
    # The speed rule's measurements, keyed as `lynx_compile.paths.measurements` looks them up (`with_measurements`).
    measurements: dict[str, dict[str, Any]] = field(default_factory=dict)
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

    def with_measurements(self, measurements: Mapping[str, Mapping[str, Any]]) -> Policy:
        """A copy carrying these speed-rule measurements too (e.g. `lynx_compile.measured()` after compiling on the
        GPU the policy will run on); a process compiling with it takes them instead of timing again."""
        return dataclasses.replace(self, measurements={**self.measurements, **{k: dict(v) for k, v in
                                                                               measurements.items()}})  # fmt: skip

    def without_lora(self) -> Policy:
        """A copy with every correction removed."""
        layers = {name: dataclasses.replace(layer, lora_rank=0, error_with_lora=None)
                  for name, layer in self.layers.items()}  # fmt: skip
        return self._replace(layers, {})

    def to_dict(self, adapters: bool = False) -> dict[str, Any]:
        """Plain data: what the JSON holds, and with `adapters` the adapter tensors too (``{name: {"a", "b"}}``)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "adapters"}
        data["layers"] = {name: dataclasses.asdict(layer) for name, layer in self.layers.items()}
        data["options"], data["measurements"] = dict(self.options), dict(self.measurements)
        if adapters:
            data["adapters"] = {name: {"a": adapter.a, "b": adapter.b} for name, adapter in self.adapters.items()}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], adapters: dict[str, LoraAdapter] | None = None) -> Policy:
        """The inverse of `to_dict`; `adapters`, when given, replace any the data holds."""
        data = dict(data)
        held = {name: LoraAdapter(pair["a"], pair["b"]) for name, pair in dict(data.pop("adapters", {})).items()}
        data["layers"] = {name: LayerPolicy(**layer) for name, layer in data["layers"].items()}
        return cls(**data, adapters=dict(held if adapters is None else adapters))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, adapters: dict[str, LoraAdapter] | None = None) -> Policy:
        return cls.from_dict(json.loads(text), adapters or {})

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

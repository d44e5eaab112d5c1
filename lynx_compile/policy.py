"""Sparsity policy: which linears to sparsify, decided by measurement (`lynx_compile.calibrate`), as readable JSON.

A `Policy` maps each linear's qualified name to a decision, the reason for it and the numbers measured on the
calibration samples. It is applied with ``torch.compile(model, backend="lynx", options={"policy": policy_or_path})``:
a layer the policy marks dense stays dense; a layer it marks sparse goes through lynx's usual rules (dtype, shape,
and on the sparse path the measured speed rule, which wins). A layer the policy does not name stays dense, and a
policy naming layers the model lacks is reported with a warning. A policy may also carry the speed rule's
measurements (`with_measurements`), so that another process or rank decides the same without timing again.

A policy with adapters saves as two files: the JSON, and ``<same stem>.lora.safetensors`` beside it (the JSON names
it) holding ``<layer>.lora_a`` (N × r) and ``<layer>.lora_b`` (r × K); each layer's ``lora_rank`` in the JSON says
how many of the stored directions it uses (0: no correction), so editing it down needs no refit. How the files are
written and read safely is `policy_files`; what a document may hold, `policy_schema`. Every problem with a policy,
built in code or read from a file, is one `PolicyError` naming the file, the layer and the field.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from .adapter_names import spellings, unwrapped
from .checks import check_int
from .lora import LoraAdapter, LoraSolution
from .method import Method
from .policy_files import adapters_path, read_policy_files, write_policy_files
from .policy_schema import FORMAT, SCHEMA_VERSION, PolicyError, check_adapter, check_document, check_layer, check_record

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerPolicy:
    """One layer's entry in a `Policy`: its decision, why, and what calibration measured of it."""

    decision: str  # "sparse" | "dense"
    reason: str
    error: float | None = None  # relative output error of the layer alone, with norm compensation
    error_without_norm: float | None = None
    flop_share: float | None = None
    lora_rank: int = 0  # directions of the stored adapter the layer uses; 0: no low-rank correction
    error_with_lora: float | None = None  # the layer's error with norm compensation and that correction

    def __post_init__(self) -> None:
        check_layer({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})


@dataclass
class Policy:
    """Per-layer decisions for a model (usually from `lynx_compile.calibrate`), passed to a compile as the ``policy``
    option: layers it marks sparse follow the speed rule, the others stay dense. `save` / `load` keep it as JSON, its
    LoRA adapters in a safetensors file beside it."""

    layers: dict[str, LayerPolicy] = field(default_factory=dict)
    model_class: str = ""
    lynx_version: str = ""
    options: dict[str, Any] = field(default_factory=dict)  # the lynx options it was calibrated with
    target: float | None = None
    model_error: float | None = None  # end-to-end relative error with the sparse layers, on the calibration samples
    # The speed rule's measurements, keyed as `lynx_compile.paths.measurements` looks them up (`with_measurements`).
    measurements: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Fitted corrections by layer name (fp32, CPU), saved beside the JSON; compared by value (`__eq__`).
    adapters: dict[str, LoraAdapter] = field(default_factory=dict, repr=False, compare=False)
    # Set by `calibrate(..., sampler=)`, whose target and model_error are then about the sampled result:
    # {"psnr_db": float | None (None: identical to dense), "sampler_runs": int}; None: one-step calibration.
    # The last field, so that the positional construction written before it existed keeps its meaning.
    sampled: dict[str, Any] | None = None

    def __eq__(self, other: object) -> bool:
        """The fields, and the adapters by value: torch.compile serves a graph compiled under options that compare
        equal, so two policies whose corrections differ must not."""
        if not isinstance(other, Policy):
            return NotImplemented
        if any(getattr(self, f.name) != getattr(other, f.name) for f in dataclasses.fields(self) if f.compare):
            return False
        return self.adapters.keys() == other.adapters.keys() and all(
            torch.equal(adapter.a, other.adapters[name].a) and torch.equal(adapter.b, other.adapters[name].b)
            for name, adapter in self.adapters.items())  # fmt: skip

    def __post_init__(self) -> None:
        if not isinstance(self.layers, dict):
            raise PolicyError(f"must be a dict of LayerPolicy, got {type(self.layers).__name__}", field="layers")
        for name, layer in self.layers.items():
            if not isinstance(name, str) or not isinstance(layer, LayerPolicy):
                raise PolicyError(f"must map layer names to LayerPolicy, got {name!r}: {layer!r}", field="layers")
        check_record({f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, lambda o: Method(**o))
        if not isinstance(self.adapters, dict) or not all(
                isinstance(name, str) and isinstance(adapter, LoraAdapter) for name, adapter in self.adapters.items()):
            raise PolicyError(f"must be a dict of layer names to LoraAdapter, got {self.adapters!r}", field="adapters")
        self.check_adapters()

    def key_for(self, name: str) -> str | None:
        """The entry of `layers` for the layer called `name`: by that name, else by the one it has without peft's
        adapter wrapper, either way round (`adapter_names`); None if the policy has none, or two."""
        if not isinstance(name, str):
            raise TypeError(f"a layer name is a str, got {name!r}")
        if name in self.layers:
            return name
        plain = unwrapped(name)
        keys = [key for key in self.layers if unwrapped(key) == plain]
        return keys[0] if len(keys) == 1 else None

    def names_missing_from(self, names: Iterable[str]) -> list[str]:
        """The policy's layers none of `names` is (in either spelling): stale, or elsewhere."""
        present = {unwrapped(name) for name in names}
        return sorted(key for key in self.layers if unwrapped(key) not in present)

    def decision_for(self, name: str) -> LayerPolicy | None:
        key = self.key_for(name)
        return None if key is None else self.layers[key]

    def adapter_for(self, name: str) -> LoraAdapter | None:
        """The correction a layer runs with (its stored adapter cut to its `lora_rank`), or None."""
        key = self.key_for(name)
        if key is None or self.layers[key].lora_rank == 0:
            return None
        return self.adapters[key].truncated(self.layers[key].lora_rank)

    def check_adapters(self) -> None:
        """Raise PolicyError for a malformed adapter, or where a layer asks for more correction than it holds. An
        adapter whose tensors are the ones checked before, unmodified (same objects, same version counters), is not
        scanned again: every LynxConfig holding the policy checks it, and compiling builds many configs."""
        for name, adapter in self.adapters.items():
            seen = (id(adapter.a), adapter.a._version, id(adapter.b), adapter.b._version)
            if getattr(adapter, "_checked_as", None) == seen:
                continue
            try:
                check_adapter(adapter.a, adapter.b)
            except PolicyError as error:
                raise error.at(layer=name) from None
            object.__setattr__(adapter, "_checked_as", seen)  # on the adapter: it lives and dies with its tensors
        for name, layer in self.layers.items():
            if layer.lora_rank == 0:
                continue
            stored = self.adapters.get(name)
            if stored is None:
                where = (f"the {len(self.adapters)} adapter(s) loaded (from the policy's adapter file, with "
                         f"Policy.load) hold none under this name: was the layer renamed?" if self.adapters else
                         "none is loaded (load the policy with Policy.load, beside its adapter file)")  # fmt: skip
                raise PolicyError(f"uses a rank-{layer.lora_rank} LoRA correction but {where}", layer=name,
                                  field="lora_rank")  # fmt: skip
            if stored.rank < layer.lora_rank:
                raise PolicyError(f"asks for rank {layer.lora_rank}, its adapter has rank {stored.rank}", layer=name,
                                  field="lora_rank")  # fmt: skip

    def _replace(self, layers: dict[str, LayerPolicy], adapters: dict[str, LoraAdapter] | None = None) -> Policy:
        return dataclasses.replace(self, layers=layers, adapters=dict(self.adapters if adapters is None else adapters))

    def with_overrides(self, overrides: dict[str, str]) -> Policy:
        """A copy where every layer matching a glob takes that decision, reported as an override. A full name the
        policy lacks (a layer its samples never reached) is added with that decision; a glob that matches no layer
        is logged."""
        if not isinstance(overrides, Mapping):
            raise TypeError(f"with_overrides takes a dict {{layer name or glob: 'sparse' or 'dense'}}, got "
                            f"{type(overrides).__name__}")  # fmt: skip
        layers = dict(self.layers)
        for pattern, decision in overrides.items():
            if not isinstance(pattern, str):
                raise TypeError(f"with_overrides: a layer name or glob is a str, got {pattern!r}")
            if decision not in ("sparse", "dense"):
                raise PolicyError(f"override decision must be 'sparse' or 'dense', got {decision!r}",
                                  field=f"overrides[{pattern!r}]")  # fmt: skip
            matched = [name for name in layers if any(fnmatch.fnmatchcase(s, pattern) for s in spellings(name))]
            for name in matched:
                layers[name] = dataclasses.replace(layers[name], decision=decision, reason=f"override {pattern!r}")
            if not matched and not any(character in pattern for character in "*?["):
                layers[pattern] = LayerPolicy(decision, f"override {pattern!r}")
            elif not matched:
                logger.warning("lynx: the override %r matches no layer of the policy (name a layer in full to add "
                               "it)", pattern)  # fmt: skip
        return self._replace(layers)

    def with_lora(self, solutions: dict[str, LoraSolution], rank: int) -> Policy:
        """A copy where each layer with a solution runs its rank-`rank` correction (0 removes corrections)."""
        if not isinstance(solutions, Mapping) or not all(isinstance(s, LoraSolution) for s in solutions.values()):
            raise TypeError(f"with_lora takes a dict of layer names to LoraSolution (fit_lora's result), got "
                            f"{type(solutions).__name__}")  # fmt: skip
        check_int("rank", rank, 0)
        layers, adapters = dict(self.layers), dict(self.adapters)
        for name, solution in solutions.items():
            if name not in layers:
                raise PolicyError("with_lora: not in the policy", layer=name)
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
        if not isinstance(measurements, Mapping):
            raise TypeError(f"with_measurements takes a dict (lynx_compile.measured()'s), got {measurements!r}")
        return dataclasses.replace(self, measurements={**self.measurements, **{k: dict(v) for k, v in
                                                                               measurements.items()}})  # fmt: skip

    def without_lora(self) -> Policy:
        """A copy with every correction removed."""
        layers = {name: dataclasses.replace(layer, lora_rank=0, error_with_lora=None)
                  for name, layer in self.layers.items()}  # fmt: skip
        return self._replace(layers, {})

    def to_dict(self, adapters: bool = False) -> dict[str, Any]:
        """Plain data: what the JSON holds, and with `adapters` the adapter tensors too (``{name: {"a", "b"}}``)."""
        data: dict[str, Any] = {"format": FORMAT, "schema_version": SCHEMA_VERSION}
        data.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "adapters"})
        data["layers"] = {name: dataclasses.asdict(layer) for name, layer in self.layers.items()}
        data["options"], data["measurements"] = dict(self.options), dict(self.measurements)
        if self.sampled is None:
            del data["sampled"]  # one-step policies read as before, by older lynx too
        else:
            data["sampled"] = dict(self.sampled)
        if adapters:
            data["adapters"] = {name: {"a": adapter.a, "b": adapter.b} for name, adapter in self.adapters.items()}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], adapters: dict[str, LoraAdapter] | None = None,
                  source: str | None = None) -> Policy:  # fmt: skip
        """The inverse of `to_dict`, checked (`source` names where the data came from in errors); `adapters`, when
        given, replace any the data holds."""
        try:
            layers = check_document(data)
            held = _adapters_from_data(data.get("adapters", {}))
            fields = {f.name: data[f.name] for f in dataclasses.fields(cls)
                      if f.name not in ("layers", "adapters") and f.name in data}  # fmt: skip
            return cls(_layers_from_data(layers), **fields, adapters=held if adapters is None else dict(adapters))
        except PolicyError as error:
            raise error.at(source) from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, adapters: dict[str, LoraAdapter] | None = None) -> Policy:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise PolicyError(f"is not a JSON document ({error})") from None
        return cls.from_dict(data, adapters or {})

    def save(self, path: str | Path) -> None:
        """Write the JSON to `path` and, where the policy holds adapters of its layers (used or turned down to rank
        0), those to `adapters_path(path)`, which the JSON names; atomically, and never over a file lynx did not
        write or another policy's adapters (`policy_files`)."""
        tensors = {}
        for name, adapter in sorted(self.adapters.items()):  # a layer's whole fit, whatever rank it runs now
            if name in self.layers:
                tensors[f"{name}.lora_a"] = adapter.a.detach().to("cpu", torch.float32).contiguous()
                tensors[f"{name}.lora_b"] = adapter.b.detach().to("cpu", torch.float32).contiguous()
        write_policy_files(Path(path), self.to_dict(), tensors)

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        """Read a policy saved by `save` (with the adapter file its JSON names); PolicyError names what is wrong."""
        path = Path(path)
        data, stored = read_policy_files(path)
        try:
            adapters = {name: LoraAdapter(pair["a"], pair["b"]) for name, pair in (stored or {}).items()}
        except ValueError as error:  # LoraAdapter's shape check
            raise PolicyError(str(error), source=str(path)) from None
        return cls.from_dict({k: v for k, v in data.items() if k != "adapter_file"}, adapters, source=str(path))


def _layers_from_data(layers: dict[str, Any]) -> dict[str, LayerPolicy]:
    built = {}
    for name, values in layers.items():
        try:
            built[name] = LayerPolicy(**values)
        except PolicyError as error:
            raise error.at(layer=name) from None
    return built


def _adapters_from_data(data: Any) -> dict[str, LoraAdapter]:
    """`to_dict(adapters=True)`'s ``{name: {"a": tensor, "b": tensor}}``."""
    if not isinstance(data, Mapping):
        raise PolicyError(f"must be {{layer: {{'a': tensor, 'b': tensor}}}}, got {type(data).__name__}",
                          field="adapters")  # fmt: skip
    adapters = {}
    for name, pair in data.items():
        if not isinstance(pair, Mapping) or set(pair) != {"a", "b"}:
            raise PolicyError(f"must be {{'a': tensor, 'b': tensor}}, got {pair!r}", layer=name, field="adapters")
        try:
            check_adapter(pair["a"], pair["b"])
        except PolicyError as error:
            raise error.at(layer=name) from None
        adapters[name] = LoraAdapter(pair["a"], pair["b"])
    return adapters


def as_policy(value: Policy | str | Path | None) -> Policy | None:
    if value is None:
        return None
    policy = value if isinstance(value, Policy) else Policy.load(value)
    policy.check_adapters()  # a Policy's adapters may have been swapped since it was built
    return policy


__all__ = ["LayerPolicy", "Policy", "PolicyError", "adapters_path", "as_policy"]

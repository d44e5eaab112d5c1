"""What a policy document may hold, checked field by field: one `PolicyError` naming the file, the layer and the
field, instead of a `KeyError` or a silently sparsified layer.

The document is the JSON `Policy.save` writes (and `Policy.to_dict` returns). Since schema version 1 it says so
(``"format": "lynx-policy", "schema_version": 1``) and names its adapter file; documents written before carry
neither and are read as version 0. A decision is exactly ``"sparse"`` or ``"dense"``: anything else (``"Dense"``,
``"off"``, ``null``) used to sparsify the layer, the unsafe side, so it is refused. Adapters must be finite
floating-point matrices of matching shapes: a NaN adapter turns every output row of its layer into NaN.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch

from .checks import is_finite_number

FORMAT = "lynx-policy"
SCHEMA_VERSION = 1
DECISIONS = ("sparse", "dense")
ADAPTER_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class PolicyError(ValueError):
    """A policy (a file, a dict or a record) that cannot be used as it is; the message names where and what."""

    def __init__(self, problem: str, *, source: str | None = None, layer: str | None = None,
                 field: str | None = None) -> None:  # fmt: skip
        self.problem, self.source, self.layer, self.field = problem, source, layer, field
        where = [f"policy {source}" if source else "policy"]
        where += [f"layer {layer!r}"] if layer is not None else []
        where += [f"field {field!r}"] if field is not None else []
        super().__init__(f"{', '.join(where)}: {problem}")

    def at(self, source: str | None = None, layer: str | None = None) -> PolicyError:
        """The same error, located in a file (or a layer) the raiser did not know about."""
        return PolicyError(self.problem, source=self.source or source,
                           layer=self.layer if self.layer is not None else layer, field=self.field)  # fmt: skip


# ---- single values ---------------------------------------------------------------------------------------------


def _optional_error(field: str) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if value is not None and not (is_finite_number(value) and value >= 0):
            raise PolicyError(f"must be null or a finite number >= 0, got {value!r}", field=field)

    return check


def _decision(value: Any) -> None:
    if not isinstance(value, str) or value not in DECISIONS:
        raise PolicyError(f"must be 'sparse' or 'dense' (exactly), got {value!r}", field="decision")


def _string(field: str) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if not isinstance(value, str):
            raise PolicyError(f"must be a string, got {value!r}", field=field)

    return check


def _flop_share(value: Any) -> None:
    if value is not None and not (is_finite_number(value) and 0 <= value <= 1):
        raise PolicyError(f"must be null or a number in [0, 1], got {value!r}", field="flop_share")


def _lora_rank(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PolicyError(f"must be an int >= 0, got {value!r}", field="lora_rank")


LAYER_FIELDS: dict[str, Callable[[Any], None]] = {
    "decision": _decision, "reason": _string("reason"), "error": _optional_error("error"),
    "error_without_norm": _optional_error("error_without_norm"), "flop_share": _flop_share,
    "lora_rank": _lora_rank, "error_with_lora": _optional_error("error_with_lora"),
}  # fmt: skip
REQUIRED_LAYER_FIELDS = ("decision", "reason")


def check_layer(values: Mapping[str, Any]) -> None:
    """A layer's fields (as `LayerPolicy` holds them)."""
    for field, check in LAYER_FIELDS.items():
        if field in values:
            check(values[field])


def check_measurement(key: str, value: Any) -> None:
    """One speed-rule measurement (`paths.base.Measurement.to_dict`), as a policy or the measurement cache holds it."""
    field = f"measurements[{key!r}]"
    if not isinstance(value, Mapping):
        raise PolicyError(f"must be an object, got {value!r}", field=field)
    rules = {"path": lambda v: isinstance(v, str), "params": lambda v: isinstance(v, Mapping),
             "dense_ms": lambda v: is_finite_number(v) and v > 0, "sparse_ms": lambda v: is_finite_number(v) and v > 0,
             "tokens": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0}  # fmt: skip
    for name, rule in rules.items():
        if name not in value or not rule(value[name]):
            raise PolicyError(f"{name!r} missing or invalid in {dict(value)!r}", field=field)
    if "epilogue_ms" in value and not (is_finite_number(value["epilogue_ms"]) and value["epilogue_ms"] >= 0):
        raise PolicyError(f"'epilogue_ms' invalid in {dict(value)!r}", field=field)


def check_record(values: Mapping[str, Any], check_method: Callable[[Mapping[str, Any]], None]) -> None:
    """A policy's own fields (not its layers): `check_method` checks the recorded method settings."""
    for field in ("model_class", "lynx_version"):
        _string(field)(values[field])
    for field in ("target", "model_error"):
        _optional_error(field)(values[field])
    if not isinstance(values["options"], Mapping):
        raise PolicyError(f"must be an object, got {values['options']!r}", field="options")
    if values["options"]:
        try:
            check_method(values["options"])
        except (TypeError, ValueError) as error:
            raise PolicyError(f"not the method settings lynx records: {error}", field="options") from None
    _sampled(values.get("sampled"))
    if not isinstance(values["measurements"], Mapping):
        raise PolicyError(f"must be an object, got {values['measurements']!r}", field="measurements")
    for key, value in values["measurements"].items():
        check_measurement(key, value)


def _sampled(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, Mapping) or set(value) != {"psnr_db", "sampler_runs"}:
        raise PolicyError(f"must be null or {{'psnr_db': number or null, 'sampler_runs': int}}, got {value!r}",
                          field="sampled")  # fmt: skip
    psnr, runs = value["psnr_db"], value["sampler_runs"]
    if psnr is not None and not is_finite_number(psnr):
        raise PolicyError(f"'psnr_db' must be null or a finite number, got {psnr!r}", field="sampled")
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 0:
        raise PolicyError(f"'sampler_runs' must be an int >= 0, got {runs!r}", field="sampled")


# ---- the document ----------------------------------------------------------------------------------------------

DOCUMENT_FIELDS = ("format", "schema_version", "layers", "model_class", "lynx_version", "options", "target",
                   "model_error", "sampled", "measurements", "adapter_file")  # fmt: skip


def check_document(data: Any) -> dict[str, Any]:
    """The document's structure (the record's own values are checked when it is built): returns its layers."""
    if not isinstance(data, Mapping):
        raise PolicyError(f"must be a JSON object, got {type(data).__name__}")
    check_version(data)
    unknown = sorted(map(repr, set(data) - set(DOCUMENT_FIELDS) - {"adapters"}))
    if unknown:
        raise PolicyError(f"unknown field(s) {', '.join(unknown)}; a policy has {list(DOCUMENT_FIELDS)}")
    if "layers" not in data:
        raise PolicyError("missing", field="layers")
    layers = data["layers"]
    if not isinstance(layers, Mapping):
        raise PolicyError(f"must be an object {{layer name: {{decision, reason, ...}}}}, got {layers!r}",
                          field="layers")  # fmt: skip
    for name, layer in layers.items():
        if not isinstance(layer, Mapping):
            raise PolicyError(f"must be an object {{decision, reason, ...}}, got {layer!r}", layer=name)
        unknown = sorted(map(repr, set(layer) - set(LAYER_FIELDS)))
        if unknown:
            raise PolicyError(f"unknown field(s) {', '.join(unknown)}; a layer has {list(LAYER_FIELDS)}", layer=name)
        missing = [field for field in REQUIRED_LAYER_FIELDS if field not in layer]
        if missing:
            raise PolicyError("missing", layer=name, field=missing[0])
    return dict(layers)


def check_version(data: Mapping[str, Any]) -> None:
    """The document's format and schema version, checked before anything a newer schema may have changed."""
    version = data.get("schema_version", 0)
    if "format" in data and data["format"] != FORMAT:
        raise PolicyError(f"must be {FORMAT!r}, got {data['format']!r}", field="format")
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise PolicyError(f"must be an int, got {version!r}", field="schema_version")
    if version > SCHEMA_VERSION:
        raise PolicyError(f"{version} is newer than this lynx reads ({SCHEMA_VERSION}): upgrade lynx-compile",
                          field="schema_version")  # fmt: skip


def is_policy_document(data: Any) -> bool:
    """Whether a parsed JSON file is a lynx policy (one `Policy.save` may overwrite): it says so, or (version 0)
    has a policy's fields."""
    if not isinstance(data, Mapping):
        return False
    if data.get("format") == FORMAT:
        return True
    layers = data.get("layers")
    return ({"layers", "lynx_version", "options"} <= set(data) and isinstance(data["lynx_version"], str)
            and isinstance(data["options"], Mapping) and isinstance(layers, Mapping)
            and all(isinstance(layer, Mapping) and "decision" in layer for layer in layers.values()))  # fmt: skip


# ---- adapters --------------------------------------------------------------------------------------------------


def check_adapter(a: Any, b: Any) -> None:
    """A correction's two halves: finite floating-point matrices, a (N, r) and b (r, K)."""
    for field, tensor in (("lora_a", a), ("lora_b", b)):
        if not isinstance(tensor, torch.Tensor):
            raise PolicyError(f"must be a tensor, got {type(tensor).__name__}", field=field)
        if tensor.dtype not in ADAPTER_DTYPES:
            raise PolicyError(f"must be floating point, got {tensor.dtype}", field=field)
        if tensor.dim() != 2:
            raise PolicyError(f"must be a matrix, got shape {tuple(tensor.shape)}", field=field)
        if not bool(torch.isfinite(tensor).all()):
            raise PolicyError("holds NaN or Inf values", field=field)
    if a.shape[1] != b.shape[0]:
        raise PolicyError(f"rank {b.shape[0]} does not match lora_a's {a.shape[1]} ({tuple(a.shape)}, "
                          f"{tuple(b.shape)})", field="lora_b")  # fmt: skip

"""A policy on disk: the JSON and, when layers carry corrections, one safetensors file of adapters beside it.

Rules, each learnt from a way the files lost data before:
- The JSON names its adapter file (``adapter_file``: a name in the JSON's folder and the SHA-256 of its bytes), and
  `read_policy_files` reads that file and nothing else: not a same-stem file of someone else's, not a file changed
  since (the digest). The adapters go to ``<stem>.lora.safetensors``, so ``model.json`` never meets a single-file
  checkpoint ``model.safetensors``, and a JSON path ending in ``.safetensors`` is refused.
- Nothing overwrites a file lynx did not write: an existing JSON is replaced only if it is a lynx policy, an existing
  adapter file only if its metadata carries lynx's marker and names the same policy file.
- Each file is written to a temporary file beside it, synced, then renamed over the target (`os.replace`), adapters
  first: a crash leaves the old pair or a JSON whose digest reveals the new adapters. New files get 0666 less the
  umask, as `open(path, "w")` gives; a file replaced keeps its mode.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from .files import write_atomically
from .policy_schema import PolicyError, check_version, is_policy_document

ADAPTER_FORMAT = "lynx-policy-adapters"
ADAPTER_SUFFIX = ".lora.safetensors"
_HALVES = {".lora_a": "a", ".lora_b": "b"}


def adapters_path(policy_path: str | Path) -> Path:
    """Where `save` puts the adapters of the policy saved at `policy_path`."""
    path = Path(policy_path)
    return path.with_name(path.stem + ADAPTER_SUFFIX)


def legacy_adapters_path(policy_path: str | Path) -> Path:
    """Where policies saved before schema version 1 put their adapters."""
    return Path(policy_path).with_suffix(".safetensors")


def write_policy_files(path: Path, document: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Write the JSON document at `path` and, if there are `tensors`, the adapter file it then names."""
    if path.suffix == ".safetensors":
        raise PolicyError("a policy is saved as JSON (its adapters go beside it): give a .json path", source=str(path))
    if not path.parent.is_dir():
        raise PolicyError(f"cannot be written: the folder {str(path.parent)!r} does not exist", source=str(path))
    _refuse_foreign_json(path)
    document = {**document, "adapter_file": None}
    if tensors:
        from safetensors.torch import save

        target = adapters_path(path)
        _refuse_foreign_adapters(target, path.name)
        blob = save(tensors, metadata={"format": ADAPTER_FORMAT, "policy": path.name})
        write_atomically(target, blob)
        document["adapter_file"] = {"name": target.name, "sha256": hashlib.sha256(blob).hexdigest()}
    write_atomically(path, (json.dumps(document, indent=1, sort_keys=True) + "\n").encode())


def read_policy_files(path: Path) -> tuple[Any, dict[str, dict[str, torch.Tensor]] | None]:
    """(the parsed JSON, {layer: {"a", "b"}} from the adapter file it names, or None when it names none)."""
    source = str(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise PolicyError(f"cannot be read ({error.strerror or error})", source=source) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PolicyError(f"is not a JSON document ({error})", source=source) from None
    if not isinstance(data, dict):
        raise PolicyError(f"must be a JSON object, got {type(data).__name__}", source=source)
    try:
        check_version(data)  # before the adapter file, whose form a newer schema may have changed
    except PolicyError as error:
        raise error.at(source=source) from None
    if "adapter_file" in data:
        reference = data["adapter_file"]
        return data, None if reference is None else _read_named_adapters(path, reference)
    # Written before schema version 1: the adapters, if any, sit at <stem>.safetensors. Read that file only where a
    # layer uses a correction, so a same-stem file of someone else's is never opened for a policy that needs none.
    layers = data.get("layers")
    uses_lora = isinstance(layers, dict) and any(isinstance(layer, dict) and layer.get("lora_rank")
                                                 for layer in layers.values())  # fmt: skip
    legacy = legacy_adapters_path(path)
    if not uses_lora or not legacy.is_file():
        return data, None
    return data, _parse_adapters(legacy.read_bytes(), str(legacy))


def _read_named_adapters(path: Path, reference: Any) -> dict[str, dict[str, torch.Tensor]]:
    source = str(path)
    if not isinstance(reference, dict) or not isinstance(reference.get("name"), str) \
            or not isinstance(reference.get("sha256"), str):  # fmt: skip
        raise PolicyError(f"must be null or {{'name': file name, 'sha256': hex digest}}, got {reference!r}",
                          source=source, field="adapter_file")  # fmt: skip
    name = reference["name"]
    if Path(name).name != name or name in ("", ".", ".."):
        raise PolicyError(f"must name a file beside the policy, got {name!r}", source=source, field="adapter_file")
    file = path.parent / name
    try:
        blob = file.read_bytes()
    except OSError as error:
        raise PolicyError(f"names {name!r}, which cannot be read ({error.strerror or error})", source=source,
                          field="adapter_file") from None  # fmt: skip
    if hashlib.sha256(blob).hexdigest() != reference["sha256"]:
        raise PolicyError(f"{name!r} is not the file saved with this policy (its SHA-256 differs): it was "
                          "overwritten or edited since", source=source, field="adapter_file")  # fmt: skip
    return _parse_adapters(blob, str(file))


def _parse_adapters(blob: bytes, source: str) -> dict[str, dict[str, torch.Tensor]]:
    from safetensors.torch import load

    try:
        tensors = load(blob)
    except Exception as error:  # safetensors raises its own SafetensorError, or others on odd bytes
        raise PolicyError(f"is not a safetensors file ({error})", source=source) from None
    adapters: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        suffix = next((suffix for suffix in _HALVES if key.endswith(suffix)), None)
        if suffix is None:
            raise PolicyError(f"holds {key!r}; adapter tensors are named <layer>.lora_a and <layer>.lora_b",
                              source=source)  # fmt: skip
        adapters.setdefault(key.removesuffix(suffix), {})[_HALVES[suffix]] = tensor
    for layer, halves in adapters.items():
        for suffix, half in _HALVES.items():
            if half not in halves:
                raise PolicyError("missing", source=source, layer=layer, field=suffix.lstrip("."))
    return adapters


def _refuse_foreign_json(path: Path) -> None:
    if not path.exists():
        return
    try:
        ours = is_policy_document(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        ours = False
    if not ours:
        raise PolicyError("exists and is not a lynx policy: not overwriting it (save under another name)",
                          source=str(path))  # fmt: skip


def _refuse_foreign_adapters(path: Path, policy_name: str) -> None:
    """Refuse to replace an adapter file lynx did not write, or that holds another policy's adapters (policies whose
    names share a stem, ``p_0.2`` and ``p_0.3`` or ``p`` and ``p.json``, would share ``p_0.lora.safetensors``)."""
    if not path.exists():
        return
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as file:
            metadata = file.metadata() or {}
    except Exception:  # not a safetensors file at all
        metadata = {}
    if metadata.get("format") != ADAPTER_FORMAT:
        raise PolicyError("adapter file exists and was not written by lynx: not overwriting it (save the policy "
                          "under another name)", source=str(path))  # fmt: skip
    if metadata.get("policy", policy_name) != policy_name:
        raise PolicyError(f"adapter file holds the adapters of the policy {metadata['policy']!r}: not overwriting "
                          f"them (save the policy under a name of another stem)", source=str(path))  # fmt: skip

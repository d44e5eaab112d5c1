"""Layer names through peft's adapter wrappers.

peft's LoRA (DoRA, and its other tuners alike) puts a wrapper where a linear was: `attn.to_q` becomes a module
holding the original `nn.Linear` as `attn.to_q.base_layer`, beside the adapter's own low-rank linears
`attn.to_q.lora_A.<adapter>` and `lora_B.<adapter>`. A layer keeps the name of the module that is the linear (the
report shows `attn.to_q.base_layer`), but include/exclude globs and policies, written for the model as it was (or as
it is with the adapter, when it is calibrated then), match it by either spelling: loading or unloading a LoRA
between generations changes no decision made by name. (A glob is matched against the layer's names, not unwrapped
itself: `exclude=["*.base_layer"]` means the wrapped layers, not every layer.)
"""

from __future__ import annotations

BASE_LAYER = "base_layer"
ADAPTER_LINEARS = ("lora_A", "lora_B")
ADAPTER_LINEAR_REASON = ("a peft LoRA adapter's low-rank linear: pruning its input distorts the adapter, and it costs "
                         "little; its base layer is decided on its own")  # fmt: skip


def unwrapped(name: str) -> str:
    """`name` without peft's wrapper segments: ``blocks.0.attn.to_q.base_layer`` → ``blocks.0.attn.to_q``."""
    parts = name.split(".")
    return name if BASE_LAYER not in parts else ".".join(part for part in parts if part != BASE_LAYER)


def spellings(name: str) -> tuple[str, ...]:
    """The names a glob or a policy may use for the layer called `name`: its own, and the wrapped layer's."""
    plain = unwrapped(name)
    return (name,) if plain == name else (name, plain)


def is_adapter_linear(name: str) -> bool:
    """Whether the layer is one of peft's LoRA adapter linears (`lora_A.<adapter>`, `lora_B.<adapter>` beside the
    wrapped `base_layer`)."""
    return any(part in ADAPTER_LINEARS for part in name.split("."))

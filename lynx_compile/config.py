"""`LynxConfig`: every option of the lynx backend, parsed from `torch.compile(..., options={...})`.

`torch.compile` hands a custom backend either `mode=` or `options=` (it refuses both at once), so the same knobs
reach lynx two ways: `mode="reduce-overhead"` alone, or `options={"mode": "reduce-overhead", "execution": ...}`.
Option keys that are not lynx fields but name an Inductor config entry (`"triton.cudagraphs"`, `"max_autotune"`)
are forwarded to Inductor untouched; anything else is rejected with the list of valid names.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import torch

from .lora import tensor_digest
from .policy import Policy, as_policy
from .method import Method

EXECUTIONS = ("auto", "simulate", "dense", "sparse")
COMPILERS = ("inductor", "eager")


@dataclass(frozen=True)
class LynxConfig:
    """Options of the lynx backend.

    Attributes:
        execution: how chosen linears run. ``"sparse"``: fused prune + compress and cuSPARSELt's sparse GEMM, for
            layers where that path exists and is measured faster than dense on this GPU (others stay dense, with the
            reason). ``"simulate"``: prune + compensate, then a dense GEMM (the method's numerics on any device, for
            quality studies; slower than dense). ``"dense"``: no rewrite at all, the A/B baseline. ``"auto"``
            (default): ``"sparse"`` on GPUs with the sparse path (sm_90), ``"simulate"`` elsewhere.
        n, m: keep ``n`` of every ``m`` consecutive input channels (2:4 by default; simulate also takes 1:4, 4:8 ...).
        norm_compensation: rescale each pruned token row to its dense L2 norm (applied after the GEMM).
        min_tokens: linears with fewer input rows (tokens × batch) stay dense; with a symbolic token count the check
            runs at run time.
        min_features: linears with in- or out-features below this stay dense.
        min_speedup: sparse execution: a layer goes sparse only where the sparse path measured at least this much
            faster than dense for its shape (with CUDA graphs if the compile uses them, else host time included).
        include: glob patterns over module qualified names (``"transformer_blocks.*"``); only matching linears may
            be sparsified. Empty means all.
        exclude: glob patterns of linears that stay dense; wins over ``include``.
        mode: torch.compile's mode, for when ``options`` are given too (``"reduce-overhead"``, ``"max-autotune"``).
        strict: raise when a lynx pass fails instead of warning and compiling the graph unchanged.
        compiler: ``"inductor"`` compiles the rewritten graph; ``"eager"`` runs it as it is (debugging, `explain`).
        policy: a `Policy` (or the path of one saved as JSON) from `lynx_compile.calibrate`: layers it marks dense
            stay dense, layers it does not name stay dense, layers it marks sparse follow the rules above.
        inductor: Inductor config entries forwarded to ``compile_fx`` (filled from unknown-to-lynx option keys).
    """

    execution: str = "auto"
    n: int = 2
    m: int = 4
    norm_compensation: bool = True
    min_tokens: int = 16
    min_features: int = 16
    min_speedup: float = 1.05
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    mode: str | None = None
    strict: bool = False
    compiler: str = "inductor"
    policy: Any = None
    inductor: dict[str, Any] = field(default_factory=dict)
    version: int = 1

    def __post_init__(self) -> None:
        if self.execution not in EXECUTIONS:
            raise ValueError(f"execution must be one of {EXECUTIONS}, got {self.execution!r}")
        if self.compiler not in COMPILERS:
            raise ValueError(f"compiler must be one of {COMPILERS}, got {self.compiler!r}")
        self.method  # noqa: B018  (checks n, m, norm_compensation, min_tokens)
        for name in ("min_tokens", "min_features"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        if not isinstance(self.min_speedup, (int, float)) or self.min_speedup <= 0:
            raise ValueError(f"min_speedup must be a positive number, got {self.min_speedup!r}")
        for name in ("include", "exclude"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, (value,))
            elif not all(isinstance(p, str) for p in value):
                raise ValueError(f"{name} must be a list of glob strings, got {value!r}")
            else:
                object.__setattr__(self, name, tuple(value))
        if self.mode is not None:
            _inductor_mode_options(self.mode)  # raises on an unknown mode
        if self.policy is not None:
            object.__setattr__(self, "policy", as_policy(self.policy))

    @property
    def method(self) -> Method:
        """The method's settings, as the op's plan, calibrate and the LoRA fit take them."""
        return Method(self.n, self.m, self.norm_compensation, self.min_tokens)

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain data; a policy as `Policy.to_dict(adapters=True)` (its adapters as tensors)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data.update(include=list(self.include), exclude=list(self.exclude), inductor=dict(self.inductor))
        if self.policy is not None:
            data["policy"] = self.policy.to_dict(adapters=True)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LynxConfig:
        if isinstance(data.get("policy"), dict):
            data = {**data, "policy": Policy.from_dict(data["policy"])}
        return cls(**data)

    def cache_key(self) -> str:
        """Everything that changes what the lynx passes emit, as a stable string (for Inductor's FX graph cache);
        a policy's adapters by the hash of their content."""
        return json.dumps(self.to_dict(), sort_keys=True, default=_content_hash)

    @property
    def cuda_graphs(self) -> bool:
        return bool(self.inductor_patches().get("triton.cudagraphs", False))

    def inductor_patches(self) -> dict[str, Any]:
        """Inductor config for this compile: the mode's entries, then the explicitly forwarded ones."""
        return {**_inductor_mode_options(self.mode), **self.inductor}


def _content_hash(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return tensor_digest(value)
    raise TypeError(f"{type(value).__name__} in a LynxConfig is not hashable for the cache key")


_LYNX_FIELDS = tuple(f.name for f in dataclasses.fields(LynxConfig) if f.name not in ("inductor", "version"))


def _inductor_mode_options(mode: str | None) -> dict[str, Any]:
    if mode in (None, "default"):
        return {}
    import torch._inductor

    try:
        return dict(torch._inductor.list_mode_options(mode))
    except RuntimeError as error:  # torch's message lists the valid modes
        raise ValueError(f"lynx: {error}") from None


def _is_inductor_option(key: str) -> bool:
    import torch._inductor.config as inductor_config

    return key in inductor_config.get_config_copy()


def parse_options(options: dict[str, Any] | LynxConfig | None = None, mode: str | None = None) -> LynxConfig:
    """Turn torch.compile's ``options``/``mode`` into a validated `LynxConfig`."""
    if isinstance(options, LynxConfig):
        return options if mode is None else dataclasses.replace(options, mode=mode)
    options = dict(options or {})
    lynx: dict[str, Any] = {}
    inductor: dict[str, Any] = dict(options.pop("inductor", {}) or {})
    unknown = []
    for key, value in options.items():
        if key in _LYNX_FIELDS:
            lynx[key] = value
        elif _is_inductor_option(key):
            inductor[key] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"lynx: unknown option(s) {sorted(unknown)}; lynx options are {list(_LYNX_FIELDS)}, "
            "and any Inductor config name (e.g. 'triton.cudagraphs', 'max_autotune') is forwarded to Inductor"
        )
    if mode is not None:
        lynx["mode"] = mode
    return LynxConfig(**lynx, inductor=inductor)

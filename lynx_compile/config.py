"""`LynxConfig`: every option of the lynx backend, parsed from `torch.compile(..., options={...})`.

`torch.compile` hands a custom backend either `mode=` or `options=` (it refuses both at once), so the same knobs
reach lynx two ways: `mode="reduce-overhead"` alone, or `options={"mode": "reduce-overhead", "execution": ...}`.
Option keys that are not lynx fields but name an Inductor config entry (`"triton.cudagraphs"`, `"max_autotune"`)
are forwarded to Inductor untouched; anything else is rejected with the list of valid names.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

import torch

from .adapter_names import ADAPTER_LINEAR_REASON, is_adapter_linear, spellings
from .checks import OptionError, check_bool, check_choice, check_int, check_names, check_number
from .lora import tensor_digest
from .method import Method
from .policy import Policy, as_policy
from .regions import RegionSpec

EXECUTIONS = ("auto", "simulate", "dense", "sparse")
COMPILERS = ("inductor", "eager")
CONFIG_VERSION = 1


@dataclass(frozen=True)
class LynxConfig:
    """Options of the lynx backend.

    Attributes:
        execution: how chosen linears run. ``"sparse"``: fused prune + compress and a sparse GEMM (cuSPARSELt's or
            lynx's CUTLASS kernel, whichever the speed rule measures faster), for layers where such a path exists and
            is measured faster than dense on this GPU (others stay dense, with the reason). ``"simulate"``: prune +
            compensate, then a dense GEMM (the method's numerics on any device, for quality studies; slower than
            dense). ``"dense"``: no rewrite at all, the A/B baseline. ``"auto"`` (default): ``"sparse"`` on GPUs
            with a sparse path (sm_90), dense on other GPUs (with a warning), ``"simulate"`` on CPUs.
        n, m: keep ``n`` of every ``m`` consecutive input channels (2:4 by default; simulate also takes 1:4, 4:8 ...).
        norm_compensation: rescale each pruned token row to its dense L2 norm (applied after the GEMM).
        min_tokens: linears with fewer input rows (tokens × batch) stay dense; a symbolic token count is decided
            under a guard at this threshold (a call on the other side recompiles).
        min_features: linears with in- or out-features below this stay dense.
        min_speedup: sparse execution: a layer goes sparse only where the sparse path measured at least this much
            faster than dense for its shape (with CUDA graphs if the compile uses them, else host time included).
        include: glob patterns over module qualified names (``"transformer_blocks.*"``); only matching linears may
            be sparsified. Empty means all.
        exclude: glob patterns of linears that stay dense; wins over ``include``.
        mode: torch.compile's mode, for when ``options`` are given too (``"reduce-overhead"``, ``"max-autotune"``).
        strict: raise when a lynx pass fails instead of warning and compiling the graph unchanged.
        pack_siblings: sparse execution: run each sibling group (q, k, v, ...) as one GEMM over its members'
            weights, packed into one buffer once the graph is compiled (the parameters re-pointed as its row blocks:
            no second copy). Off by default: it runs on the GPU, but FLUX measured no faster with it (RESULTS.md,
            2026-11-26).
        sparse_paths: sparse execution: the sparse paths the speed rule may choose from, by name (``"cusparselt"``,
            ``"cutlass"``, and ``"cusparselt_planned"`` where nvmath-python imports: `lynx_compile.paths.PATHS`);
            empty means every registered one.
        compiler: ``"inductor"`` compiles the rewritten graph; ``"eager"`` runs it as it is (debugging, `explain`).
        policy: a `Policy` (or the path of one saved as JSON) from `lynx_compile.calibrate`: layers it marks dense
            stay dense, layers it does not name stay dense, layers it marks sparse follow the rules above.
        inductor: Inductor config entries forwarded to ``compile_fx`` (filled from unknown-to-lynx option keys).
        region: set by `lynx_compile.compile_repeated_blocks`, not by hand: the block instances the graph compiled
            with these options serves (`regions.RegionSpec`), whose layers it names and decides.
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
    pack_siblings: bool = False
    sparse_paths: tuple[str, ...] = ()
    compiler: str = "inductor"
    policy: Any = None
    inductor: dict[str, Any] = field(default_factory=dict)
    region: Any = None
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        """Type- and range-check every option here, at torch.compile time: a bad value caught later would surface
        inside AOT tracing, after the passes, where ``strict=False`` cannot keep the model compiling."""
        check_choice("execution", self.execution, EXECUTIONS)
        check_choice("compiler", self.compiler, COMPILERS)
        self.method  # noqa: B018  (checks n, m, norm_compensation, min_tokens)
        check_int("min_features", self.min_features, 0)
        check_number("min_speedup", self.min_speedup, minimum=0, above=True)
        for name in ("include", "exclude"):
            object.__setattr__(self, name, _globs(name, getattr(self, name)))
        check_bool("strict", self.strict)
        check_bool("pack_siblings", self.pack_siblings)
        object.__setattr__(self, "sparse_paths", _path_names(self.sparse_paths))
        if self.mode is not None and not isinstance(self.mode, str):
            raise OptionError(f"lynx option 'mode' must be a string or None, got {self.mode!r}")
        _inductor_mode_options(self.mode)  # raises on an unknown mode
        _check_inductor_options(self.inductor)
        if self.version != CONFIG_VERSION:
            raise OptionError(f"LynxConfig version {self.version!r} is not supported (this lynx: {CONFIG_VERSION})")
        if self.policy is not None:
            a_path = isinstance(self.policy, (str, os.PathLike))
            if not (isinstance(self.policy, Policy) or a_path) or (a_path and not os.fspath(self.policy)):
                raise OptionError(f"lynx option 'policy' must be a Policy or the path of a saved one, "
                                  f"got {self.policy!r}")  # fmt: skip
            object.__setattr__(self, "policy", as_policy(self.policy))
            self._check_policy_method()
        if isinstance(self.region, dict):  # from `to_dict`
            object.__setattr__(self, "region", _region_from_dict(self.region))
        if self.region is not None and not isinstance(self.region, RegionSpec):
            raise OptionError(f"lynx option 'region' is set by lynx_compile.compile_repeated_blocks, "
                              f"got {self.region!r}")

    def _check_policy_method(self) -> None:
        """Refuse a policy calibrated for another method: its errors, its choice of layers and its corrections were
        measured for the n:m and norm compensation it records, and would not hold for others. An error rather than
        a warning: the two ways to carry on (ignore the policy, or keep every layer dense) both discard what the
        user asked for, where the fix is one option away. min_tokens is not compared: a layer it moves either way
        runs dense or was recorded dense."""
        recorded, current = self.policy.options, self.method.to_dict()
        differing = [key for key in ("n", "m", "norm_compensation")
                     if key in recorded and recorded[key] != current[key]]  # fmt: skip
        if differing:
            calibrated = ", ".join(f"{key}={recorded[key]!r}" for key in differing)
            compiling = ", ".join(f"{key}={current[key]!r}" for key in differing)
            raise OptionError(f"lynx option 'policy': calibrated with {calibrated}, but these options give "
                              f"{compiling}; pass the policy's settings as options (or calibrate with these)")

    @property
    def selects_by_name(self) -> bool:
        """Whether any option picks layers by name (include, exclude, a policy): else names only label reports."""
        return bool(self.include or self.exclude or self.policy is not None)

    def name_rule(self, name: str) -> str | None:
        """Why its name keeps the linear called `name` dense — `include`/`exclude`, or it is a peft adapter's own
        linear —, or None: one rule for the passes and `calibrate`."""
        if is_adapter_linear(name):
            return ADAPTER_LINEAR_REASON
        excluded_by = next((pattern for pattern in self.exclude if self.matches(pattern, name)), None)
        if excluded_by is not None:
            return f"excluded by {excluded_by!r}"
        if self.include and not any(self.matches(pattern, name) for pattern in self.include):
            return "not matched by include"
        return None

    @staticmethod
    def matches(pattern: str, name: str) -> bool:
        """Whether an include/exclude glob matches the linear called `name` — by either spelling of a layer peft
        wrapped (its own name and the one it had before)."""
        return any(fnmatch.fnmatchcase(spelling, pattern) for spelling in spellings(name))

    def name_decision(self, name: str) -> tuple[str | None, int]:
        """What include/exclude and the policy say about the linear called `name`, before its shape is known: why it
        stays dense (None: it may go sparse) and the rank of the policy's correction for it (0: none)."""
        rule = self.name_rule(name)
        if rule is not None:
            return rule, 0
        if self.policy is None:
            return None, 0
        entry = self.policy.decision_for(name)
        if entry is None:
            return "not in the policy", 0
        if entry.decision == "dense":
            return f"policy: {entry.reason}", 0
        return None, entry.lora_rank

    def name_variant(self, name: str) -> tuple[bool, str]:
        """What of `name_decision` changes the code compiled for the layer: whether it may go sparse, and its own
        correction (adapters differ per layer, and a graph holds the one it was compiled with). Instances of a
        block whose layers have equal variants can share one graph."""
        reason, rank = self.name_decision(name)
        return reason is None, f"rank-{rank} correction of {name}" if rank else ""

    @property
    def method(self) -> Method:
        """The method's settings, as the op's plan, calibrate and the LoRA fit take them."""
        return Method(self.n, self.m, self.norm_compensation, self.min_tokens)

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain data; a policy as `Policy.to_dict(adapters=True)` (its adapters as tensors)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data.update(include=list(self.include), exclude=list(self.exclude), sparse_paths=list(self.sparse_paths),
                    inductor=dict(self.inductor))  # fmt: skip
        if self.region is not None:
            data["region"] = {"label": self.region.label, "instances": list(self.region.instances),
                              "one_graph": self.region.one_graph}  # fmt: skip
        if self.policy is not None:
            data["policy"] = self.policy.to_dict(adapters=True)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LynxConfig:
        if not isinstance(data, dict):
            raise OptionError(f"LynxConfig.from_dict takes a dict, got {type(data).__name__}")
        unknown = sorted(map(repr, set(data) - {f.name for f in dataclasses.fields(cls)}))
        if unknown:
            raise OptionError(f"LynxConfig.from_dict: unknown field(s) {', '.join(unknown)}")
        if isinstance(data.get("policy"), dict):
            data = {**data, "policy": Policy.from_dict(data["policy"])}
        return cls(**data)

    def __hash__(self) -> int:
        """By its scalar fields (a frozen config is hashable, though its `inductor` dict and a policy are not):
        configs that compare equal have them equal, and Python hashes 2 and 2.0 alike."""
        return hash((self.execution, self.n, self.m, self.norm_compensation, self.min_tokens, self.min_features,
                     self.min_speedup, self.include, self.exclude, self.mode, self.compiler))

    def cache_key(self) -> str:
        """Everything that changes what the lynx passes emit, as a stable string (for Inductor's FX graph cache);
        a policy's adapters by the hash of their content."""
        return json.dumps(self.to_dict(), sort_keys=True, default=content_key)

    @property
    def cuda_graphs(self) -> bool:
        return bool(self.inductor_patches().get("triton.cudagraphs", False))

    def inductor_patches(self) -> dict[str, Any]:
        """Inductor config for this compile: the mode's entries, then the explicitly forwarded ones."""
        return {**_inductor_mode_options(self.mode), **self.inductor}


def _region_from_dict(data: dict[str, Any]) -> RegionSpec:
    try:
        return RegionSpec(data["label"], tuple(data["instances"]), bool(data.get("one_graph", True)))
    except (KeyError, TypeError) as error:
        raise OptionError(f"lynx option 'region': {data!r} is no region ({error})") from None


def content_key(value: Any) -> str:
    """Text for what JSON cannot write: a tensor (a policy's adapters) by its content, a path by its own text, an
    Inductor custom pass forwarded in the options by its `uuid()` (as Inductor keys it). Anything else cannot be keyed
    across processes: a fresh token, so that no cached graph is ever served for it (Inductor does the same for a
    custom pass that is a plain function)."""
    if isinstance(value, torch.Tensor):
        return tensor_digest(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    key = value.uuid() if callable(getattr(value, "uuid", None)) else None
    if key is not None:
        return f"{type(value).__module__}.{type(value).__qualname__}:{key!r}"
    return f"uncacheable {type(value).__qualname__} {uuid.uuid4()}"


_LYNX_FIELDS = tuple(f.name for f in dataclasses.fields(LynxConfig) if f.name not in ("inductor", "version", "region"))


def _inductor_mode_options(mode: str | None) -> dict[str, Any]:
    if mode in (None, "default"):
        return {}
    if not isinstance(mode, str) or not mode:  # torch reads "" as no mode, and returns every mode's settings
        raise OptionError(f"lynx option 'mode' must be one of torch.compile's modes, got {mode!r}")
    import torch._inductor

    try:
        return dict(torch._inductor.list_mode_options(mode))
    except RuntimeError as error:  # torch's message lists the valid modes
        raise OptionError(f"lynx option 'mode': {error}") from None


def _inductor_defaults() -> dict[str, Any]:
    import torch._inductor.config as inductor_config

    return inductor_config.get_config_copy()


def _is_inductor_option(key: object) -> bool:
    return isinstance(key, str) and key in _inductor_defaults()


# The Inductor config entry lynx's lowering pass goes in (backend.compile_graph): not the user's to forward.
LOWERING_SLOT = "post_grad_custom_post_pass"


def _check_inductor_options(entries: Any) -> None:
    """Each key must name an Inductor config entry; where its current value is a bool, int, float or str, the value
    must be one too (Inductor itself would take anything and fail, or misbehave, deep in code generation)."""
    if not isinstance(entries, dict):
        raise OptionError(f"lynx option 'inductor' must be a dict of Inductor config entries, got {entries!r}")
    defaults = _inductor_defaults()
    for key, value in entries.items():
        if not isinstance(key, str) or key not in defaults:
            raise OptionError(f"lynx option 'inductor': {key!r} is not an Inductor config name")
        if key == LOWERING_SLOT:
            raise OptionError(f"lynx option {key!r} (Inductor) is the slot lynx lowers its ops in; it cannot be "
                              "forwarded")  # fmt: skip
        current = defaults[key]
        if isinstance(current, bool):
            check_bool(key, value)
        elif isinstance(current, int):
            check_int(key, value)
        elif isinstance(current, float):
            check_number(key, value)
        elif isinstance(current, str) and not isinstance(value, str):
            raise OptionError(f"lynx option {key!r} (Inductor) must be a string, got {value!r}")


def _globs(name: str, value: Any) -> tuple[str, ...]:
    """One glob or a list/tuple of them, as a tuple."""
    return check_names(name, value, "a glob string or a list of glob strings")


def _path_names(value: Any) -> tuple[str, ...]:
    """One sparse path's name or a list of them, each a registered sparse path."""
    from .paths import PATHS  # here: the paths import the method, which imports this module's neighbours

    names = check_names("sparse_paths", value, "a path's name or a list of them")
    sparse = sorted(name for name, path in PATHS.items() if path.execution == "sparse")
    unknown = [name for name in names if name not in sparse]
    if unknown:
        raise OptionError(f"lynx option 'sparse_paths': unknown path(s) {unknown}; registered here: {sparse}")
    return names


def parse_options(options: dict[str, Any] | LynxConfig | None = None, mode: str | None = None) -> LynxConfig:
    """Turn torch.compile's ``options``/``mode`` into a validated `LynxConfig`."""
    if isinstance(options, LynxConfig):
        _check_given_once("mode", options.mode, mode)
        return options if mode is None else dataclasses.replace(options, mode=mode)
    if options is not None and not isinstance(options, dict):
        raise OptionError(f"lynx options must be a dict (or a LynxConfig), got {type(options).__name__}")
    options = dict(options or {})
    lynx: dict[str, Any] = {}
    inductor = options.pop("inductor", None)
    inductor = {} if inductor is None else inductor
    _check_inductor_options(inductor)
    inductor = dict(inductor)
    unknown = []
    for key, value in options.items():
        if key in _LYNX_FIELDS:
            lynx[key] = value
        elif _is_inductor_option(key):
            _check_given_once(key, inductor.get(key), value)
            inductor[key] = value
        else:
            unknown.append(key)
    if unknown:
        raise OptionError(
            f"lynx: unknown option(s) [{', '.join(sorted(map(repr, unknown)))}]; "
            f"lynx options are {list(_LYNX_FIELDS)}, "
            "and any Inductor config name (e.g. 'triton.cudagraphs', 'max_autotune') is forwarded to Inductor"
        )
    if mode is not None:
        _check_given_once("mode", lynx.get("mode"), mode)
        lynx["mode"] = mode
    return LynxConfig(**lynx, inductor=inductor)


def _check_given_once(name: str, first: Any, second: Any) -> None:
    """An option given two ways (`mode` beside options, an Inductor setting at the top level and in `inductor`)
    must say the same both times: which to keep would be a guess."""
    if first is not None and second is not None and first != second:
        raise OptionError(f"lynx option {name!r} is given twice, as {first!r} and as {second!r}: give it once")

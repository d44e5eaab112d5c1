"""Where a graph's linears live in the model: full names when a graph is rooted at a block.

diffusers compiles a transformer block by block (`compile_repeated_blocks`): Dynamo traces a block class's forward
once, with the block as the graph's root, and every instance of the class runs that graph (parameters are graph
inputs). The names Dynamo's sources give (`passes/names.py`) are then relative to the block (``proj_out``), where a
policy and include/exclude speak of the model (``single_transformer_blocks.3.proj_out``), and the model's own
top-level ``proj_out`` answers to the same short name. A graph break inside a block roots a graph at it the same way.

The backend only sees the graph. So lynx keeps a registry of the models it is given (`calibrate`,
`lynx_compile.compile_repeated_blocks`, `explain`): weak references, most recent first; and it looks for the model
whose call is running on the Python stack while Dynamo compiles one of its frames (the one given to
``torch.compile``, or the diffusers model whose blocks are compiled), tried first unless a registered model holds
it. A graph's root module is placed in one of them by the identity of its parameters — a
graph's parameters are those of the instance traced first, and their qualified names in the model give its path
(``single_transformer_blocks.0``). The graph then serves:
- the instances its `RegionSpec` lists, when `lynx_compile.compile_repeated_blocks` compiled it (one graph per
  decision pattern; Dynamo reuses a graph only under the backend that compiled it, so the list is exact, also for a
  graph of a submodule's frame after a graph break);
- otherwise every instance of the module's class in the model built as the traced one (the same parameters), since
  Dynamo may reuse the graph for any of them.
  Options that treat those instances differently cannot be honoured by one graph: the decide pass raises a
  `RegionError` instead of compiling a change the user did not ask for.

A graph lynx cannot place keeps names relative to its own root. Where that root is evidently not the model the
options speak of — not the class the policy was calibrated on, or a block class a diffusers model compiles
regionally while include/exclude name layers — matching would be a guess (the bug this module exists for), so that
is a `RegionError` too, saying how to compile instead.
"""

from __future__ import annotations

import logging
import sys
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from .messages import Once, some_names

logger = logging.getLogger(__name__)


class RegionError(ValueError):
    """Options a graph that serves several module instances cannot honour, or names lynx cannot place. Raised
    whatever ``strict`` says: compiling on would silently change what the options ask for."""


@dataclass(frozen=True)
class RegionSpec:
    """The module instances one compiled graph serves, as `lynx_compile.compile_repeated_blocks` compiled it: their
    qualified names in the model (``("single_transformer_blocks.0", "single_transformer_blocks.2")``) and a label
    saying which decision pattern of which class it is. Plain data, so that it can be part of the cache key.
    `one_graph` False: the instances share these options but each runs a graph of its own (linears outside the
    blocks whose options decide them alike)."""

    label: str
    instances: tuple[str, ...]
    one_graph: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.label, str) or not isinstance(self.instances, tuple) or not self.instances or not all(
                isinstance(name, str) for name in self.instances):  # fmt: skip
            raise TypeError(f"RegionSpec(label: str, instances: non-empty tuple of str), got {self!r}")


@dataclass(frozen=True)
class Placement:
    """A graph root placed in a model: its path there and every instance the graph serves."""

    path: str  # the traced module's qualified name in the model ("": the model itself)
    instances: tuple[str, ...]  # qualified names of the module instances the graph serves, in model order
    label: str  # "" for the model itself; else the region ("FluxSingleTransformerBlock", "... pattern 2 of 3")
    exact: bool  # the instances are the ones lynx compiled the graph for (else: every instance of the class)
    model: int = 0  # id() of the model it is placed in
    model_ref: Any = field(default=None, compare=False, repr=False)  # a weak reference to it
    # the region's own instances (the blocks) whose `instances` these are: a graph rooted inside a block (a graph break
    # in one of its submodules) serves submodules of the blocks; () where `instances` are the blocks themselves
    blocks: tuple[str, ...] = ()

    @property
    def regional(self) -> bool:
        return self.path != ""

    def names(self, relative: str) -> tuple[str, ...]:
        """A layer's full name in each instance (`relative` to the traced module), in model order."""
        return tuple(qualified(instance, relative) for instance in self.instances)

    def name(self, relative: str) -> str:
        """The layer's full name in the traced instance."""
        return qualified(self.path, relative)


def qualified(prefix: str, relative: str) -> str:
    """``prefix.relative``, where either may be the empty name of the module itself."""
    return ".".join(part for part in (prefix, relative) if part)


_models: list[weakref.ref] = []


def register_model(model: torch.nn.Module) -> None:
    """Remember `model` (weakly) as one whose submodules' graphs lynx may place; the latest registered is tried
    first."""
    global _models
    _models = [ref for ref in _models if ref() is not None and ref() is not model]
    _models.insert(0, weakref.ref(model))


def registered_models() -> list[torch.nn.Module]:
    return [model for model in (ref() for ref in _models) if model is not None]


def unregistered(module: torch.nn.Module | None) -> torch.nn.Module | None:
    """`module` (the model found on the stack: `model_on_stack`), or None where a model given to lynx holds it: the
    names the options speak of are that model's. The model found on the stack is not registered: a wrapper compiled
    once must not name the model compiled alone later."""
    if module is None or any(held is module for model in registered_models() for held in model.modules()):
        return None
    return module


def place(parameters: Iterable[tuple[torch.nn.Parameter, str]], region: RegionSpec | None,
          class_wide: bool = True, first: torch.nn.Module | None = None,
          shapes: dict[str, tuple[int, ...]] | None = None) -> Placement | None:  # fmt: skip
    """Place the module that reaches each parameter by its qualified name relative to that module, or None.

    Tried in `first` (the model whose call is running: `model_on_stack`), then in every registered model: the
    module's path is what each parameter's name in the model has before its relative name, the same for all of them
    (a parameter shared between modules has several names). A module inside a `region` serves its instances;
    otherwise, with `class_wide`, every instance of its class whose parameters have the graph's static `shapes` (by
    relative name; a frame's own module, which Dynamo may reuse the graph for), else itself alone."""
    parameters = list(parameters)
    models = registered_models()
    for model in ([first] if first is not None else []) + [model for model in models if model is not first]:
        index: dict[int, list[str]] = {}
        for name, parameter in model.named_parameters(remove_duplicate=False):
            index.setdefault(id(parameter), []).append(name)
        paths: set[str] | None = None
        for parameter, relative in parameters:
            found = {name[: len(name) - len(relative)].rstrip(".") for name in index.get(id(parameter), ())
                     if name == relative or name.endswith("." + relative)}  # fmt: skip
            paths = found if paths is None else paths & found
            if not paths:
                break
        if paths:
            path = min(paths, key=lambda path: (path.count("."), path))
            return _placement(model, path, region, class_wide, shapes or {})
    return None


def inside(path: str, outer: str) -> bool:
    """Is module path `path` `outer` or within it ("" is the whole model)?"""
    return path == outer or outer == "" or path.startswith(outer + ".")


def linear_name(parameter: str) -> str:
    """The name of the linear over a parameter's qualified name: its module for ``<module>.weight`` (``""`` for a
    bare `nn.Linear`), the parameter's own name otherwise."""
    module, _, leaf = parameter.rpartition(".")
    return module if leaf == "weight" else parameter


def _placement(model: torch.nn.Module, path: str, region: RegionSpec | None, class_wide: bool,
               shapes: dict[str, tuple[int, ...]]) -> Placement:  # fmt: skip
    instances = () if region is None else region.instances
    owner = next((instance for instance in instances if inside(path, instance)), None)
    if owner is not None and not region.one_graph:
        return Placement(path, (path,), region.label, True, id(model), weakref.ref(model))
    if owner is not None:
        # Only the instances built as the traced one: a LoRA loaded into some of them after compiling gives those
        # other parameters, and Dynamo a graph of their own.
        below = path[len(owner):].lstrip(".")
        built = _parameter_shapes(model, path)
        blocks = tuple(instance for instance in region.instances
                       if _parameter_shapes(model, qualified(instance, below)) == built
                       and (instance == owner or not _runs_eagerly_within(model, instance)))  # fmt: skip
        instances = tuple(qualified(instance, below) for instance in blocks)
        return Placement(path, instances, region.label, True, id(model), weakref.ref(model),
                         blocks if below else ())
    if path == "" or not class_wide:
        return Placement(path, (path,), "", True, id(model), weakref.ref(model))
    traced = model.get_submodule(path)
    # An instance without a submodule the traced one has (WanVACE's later VACE blocks have no `proj_in`) fails
    # Dynamo's guards and gets a graph of its own: this one does not serve it. Nor does one whose parameters have
    # other shapes than the graph was specialized to (Dynamo keeps parameter shapes static and guards on them: peft's
    # `lora_A` and `lora_B`, both `nn.Linear` frames, get a graph each). Nor one whose forward
    # `torch.compiler.disable` wraps: that one runs eagerly, dense.
    # Parameters are compared by name less `_orig_mod`: a submodule torch.compile or torch.compiler.disable wrapped
    # in one instance (`fc2._orig_mod.weight`) is guarded by Dynamo only where the graph reads it.
    parameters = _unwrapped_parameters(traced)
    shapes = {_unwrapped(name): shape for name, shape in shapes.items()}
    # Where the model is compiled region by region (diffusers' compile_repeated_blocks), modules outside every
    # compiled one run eagerly: FLUX's time embedding linears are no instances of a graph of `nn.Linear.forward`
    # that a graph break inside a block had Dynamo compile.
    compiled = [path for path, module in model.named_modules() if module.__dict__.get("_compiled_call_impl")]

    def served(name: str, module: torch.nn.Module) -> bool:
        if type(module) is not type(traced):
            return False
        own = _unwrapped_parameters(module)
        if list(own) != list(parameters) or any(tuple(own[key].shape) != shape for key, shape in shapes.items()
                                                if key in own):  # fmt: skip
            return False
        if module is not traced and any(parameter_kind(own[key]) != parameter_kind(parameter)
                                        for key, parameter in parameters.items()):  # fmt: skip
            return False  # torchao's float8 (another subclass, other metadata) in one instance only: its own graph
        return module is traced or (not _runs_eagerly_within(model, name)
                                    and (not compiled or any(inside(name, outer) for outer in compiled)))

    instances = tuple(name for name, module in model.named_modules() if served(name, module))
    return Placement(path, instances, type(traced).__name__, False, id(model), weakref.ref(model))


def _unwrapped(name: str) -> str:
    """A qualified name less the `_orig_mod` of the wrappers torch.compile and torch.compiler.disable put around a
    module."""
    return ".".join(part for part in name.split(".") if part != "_orig_mod")


def _unwrapped_parameters(module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {_unwrapped(name): parameter for name, parameter in module.named_parameters()}


def _runs_eagerly_within(model: torch.nn.Module, path: str) -> bool:
    """Whether the module at `path`, or one it lies in, runs eagerly (`runs_eagerly`): torch.compiler.disable(block)
    puts the block inside a wrapper whose forward is disabled."""
    parts = path.split(".") if path else []
    return any(runs_eagerly(model.get_submodule(".".join(parts[:depth]))) for depth in range(1, len(parts) + 1))


def runs_eagerly(module: torch.nn.Module) -> bool:
    """Whether Dynamo never traces the module's forward: a function `torch.compiler.disable` wraps, directly or
    under wrappers, or a diffusers hook whose own forward is one (the SEA cache's on its first block, MagCache's)."""
    if _disabled(module.forward):
        return True
    hooks = getattr(getattr(module, "_diffusers_hook", None), "hooks", None)  # diffusers' HookRegistry
    return isinstance(hooks, dict) and any(_disabled(getattr(hook, "new_forward", None)) for hook in hooks.values())


def _disabled(function: Any) -> bool:
    for _ in range(8):  # through functools.partial and functools.wraps
        if function is None:
            return False
        if getattr(function, "_torchdynamo_disable", False):
            return True
        function = getattr(function, "func", None) or getattr(function, "__wrapped__", None)
    return False


def _parameter_shapes(model: torch.nn.Module, path: str) -> list[tuple[str, tuple[int, ...], tuple]] | None:
    """The names, shapes and kinds of the parameters under the module at `path`, or None where there is none."""
    try:
        module = model.get_submodule(path)
    except AttributeError:
        return None
    return [(name, tuple(parameter.shape), parameter_kind(parameter)) for name, parameter in module.named_parameters()]


def parameter_kind(parameter: torch.Tensor) -> tuple:
    """What a block instance's parameter must share with the traced instance's, besides its shape, for the graph to
    serve it: its type and, for a tensor subclass (torchao's float8 and int8 weights, DTensor), its inner tensors'
    kinds, dtypes and shapes and its metadata (e4m3 or e5m2, the activation's quantization), on which Dynamo guards. A
    plain tensor's dtype and device are left out: diffusers' layerwise casting and offloading hooks change them in
    place just before a block runs, so that the traced instance differs there from siblings its graph serves."""
    kind: tuple = (type(parameter).__name__,)
    if is_traceable_wrapper_subclass(parameter):
        names, metadata = parameter.__tensor_flatten__()
        kind += (tuple((name, *_inner_kind(getattr(parameter, name))) for name in names), repr(metadata))
    return kind


def _inner_kind(value: object) -> tuple:
    """An entry of a subclass's flattened form: a tensor (itself perhaps a subclass) or other state (DTensor's
    device mesh)."""
    if not isinstance(value, torch.Tensor):
        return (type(value).__name__,)
    return (*parameter_kind(value), str(value.dtype), tuple(value.shape))


_uncompiled_layers_warnings = Once()


def warn_about_uncompiled_layers(placement: Placement, policy: Any) -> None:
    """Once per model and policy: the layers a policy marks sparse outside every module compiled on its own, which
    diffusers' regional compilation runs eagerly, i.e. dense."""
    model = placement.model_ref() if placement.model_ref is not None else None
    # by its sparse layers, not id(policy): a policy given as a path is read again for each graph
    sparse = frozenset(name for name, layer in policy.layers.items() if layer.decision == "sparse")
    if model is None or not _uncompiled_layers_warnings.first((placement.model, sparse)):
        return
    compiled = [path for path, module in model.named_modules() if module.__dict__.get("_compiled_call_impl")]
    if not compiled:  # no module compiled on its own: a whole-model compile with graph breaks inside the blocks
        return
    outside = sorted(name for name in sparse if not any(inside(name, path) for path in compiled))
    if outside:
        logger.warning("lynx: the policy marks %d layer(s) sparse outside the blocks compiled on their own, which run "
                       "eagerly, dense: %s; lynx_compile.compile_repeated_blocks compiles them too", len(outside),
                       some_names(outside))  # fmt: skip


def frame_variable(root_source: Any) -> tuple[str, str] | None:
    """("f_locals" or "f_globals", name) of the variable a Dynamo source of a module starts from (``L['self']``)."""
    while getattr(root_source, "base", None) is not None:  # NNModuleSource(LocalSource('self')) and the like
        root_source = root_source.base
    for attribute, scope in (("local_name", "f_locals"), ("global_name", "f_globals")):
        name = getattr(root_source, attribute, None)
        if isinstance(name, str):
            return scope, name
    return None


def frame_object(root_source: Any) -> Any:
    """The object Dynamo's source of a graph root names in the frame being compiled (the module of ``L['self']``),
    or None where it cannot be read: outside a Dynamo compile, or a root that is no local or global."""
    variable = frame_variable(root_source)
    if variable is None:
        return None
    try:
        from torch._dynamo.symbolic_convert import InstructionTranslator

        frame = InstructionTranslator.current_tx().output.root_tx
    except Exception:  # not inside Dynamo (an FX-traced graph), or a torch without this internal
        return None
    scope, name = variable
    return getattr(frame, scope, {}).get(name)


def model_on_stack(policy_model: str = "") -> torch.nn.Module | None:
    """The model whose call is running while Dynamo compiles one of its frames (the frame's callers are still on the
    Python stack), or None. The innermost module there that the user compiled — given to ``torch.compile`` (its
    `OptimizedModule`'s ``_orig_mod``) or compiled in place (``model.compile()``), out of a DDP or FSDP wrapper —
    unless it is a block diffusers compiles on its own: then, where diffusers compiled it in place (its
    `compile_repeated_blocks`), the innermost diffusers model around it. Where a policy is given, only a module of
    `policy_model`, the class it was calibrated on. A model frame holding a graph break in a loop over its blocks is
    not compiled at all, so its graph never reaches the backend: the stack is where the model is seen."""
    blocks, block_in_place, frame = repeated_block_classes(), False, sys._getframe(1)

    def wanted(module: torch.nn.Module) -> bool:
        return type(module).__name__ not in blocks and policy_model in {c.__name__ for c in type(module).__mro__} | {""}

    # Only the frames of a module's call: reading a frame's locals before Python 3.13 snapshots them all (a
    # pipeline's latents), held until the frame returns; a module call's frame holds its arguments only
    calls = [getattr(torch.nn.Module, name).__code__ for name in ("_wrapped_call_impl", "_call_impl")
             if hasattr(torch.nn.Module, name)]  # fmt: skip
    while frame is not None:  # code compared by identity: hashing one hashes its constants (Dynamo's hold slices)
        module = frame.f_locals.get("self") if any(frame.f_code is code for code in calls) else None
        if isinstance(module, torch.nn.Module):
            compiled = _compiled_module(module)
            if compiled is not None and type(compiled).__name__ in blocks:
                block_in_place = block_in_place or module.__dict__.get("_compiled_call_impl") is not None
            elif compiled is not None and wanted(compiled):
                return compiled
            elif compiled is None and block_in_place and wanted(module) \
                    and "ModelMixin" in {cls.__name__ for cls in type(module).__mro__}:  # fmt: skip
                return module
        frame = frame.f_back
    return None


_WRAPPERS = ("DistributedDataParallel", "DataParallel", "FullyShardedDataParallel")  # names are their `.module`'s


def _compiled_module(module: torch.nn.Module) -> torch.nn.Module | None:
    """The module the user compiled, if `module` is one (or the `OptimizedModule` around one), out of its wrappers."""
    original = module.__dict__.get("_modules", {}).get("_orig_mod")
    if type(module).__name__ == "OptimizedModule" and isinstance(original, torch.nn.Module):
        module = original
    elif module.__dict__.get("_compiled_call_impl") is None:
        return None
    while type(module).__name__ in _WRAPPERS and isinstance(getattr(module, "module", None), torch.nn.Module):
        module = module.module
    return module


def repeated_block_classes() -> set[str]:
    """The class names diffusers models list in ``_repeated_blocks``: the blocks its regional compilation compiles
    on their own (read from the classes loaded, so no import of diffusers)."""
    names, pending, seen = set(), [torch.nn.Module], set()
    while pending:
        cls = pending.pop()
        blocks = cls.__dict__.get("_repeated_blocks")
        if isinstance(blocks, (list, tuple)):
            names.update(block for block in blocks if isinstance(block, str))
        for subclass in cls.__subclasses__():
            if subclass not in seen:
                seen.add(subclass)
                pending.append(subclass)
    return names

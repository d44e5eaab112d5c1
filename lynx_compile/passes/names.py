"""The qualified name of the module that owns a linear's weight, as `named_modules()` gives it.

Dynamo lifts each parameter to a placeholder whose `grapharg.source` says how the traced code reached it (or, under
Inductor's ``freezing`` in no_grad, installs it as an attribute of the graph, its source kept by the compile): a
chain such as L['this'] → (a module) → ._modules['blocks'] → ['0'] → ._modules['ff'] → ._parameters['weight']. The name
is read from that chain structurally (keys are taken as they are: a ModuleDict key ``a'b`` stays ``a'b``), relative
to the outermost module in it — whatever the forward's first argument is called, whether the module came in as
``self``, as a closure cell or a global, or is a bare `nn.Linear`, whose name is ``""`` as in `named_modules()`.

A name that cannot be recovered is never guessed: the chain goes through something this reader does not know, or
two modules reached from different roots give the same name. The site then gets a label and a `problem`, and the
decide pass keeps it dense with that reason. A graph Dynamo compiles for a submodule's own frame (regional
compilation, or a graph break inside the submodule) is rooted at that submodule: its names are relative to it until
`place_linears` finds the submodule in a model lynx knows (`lynx_compile.regions`), so each name also keeps the
parameter itself and the source of its root.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.fx

from ..regions import linear_name

_CONTAINERS = {"_modules": "module", "_parameters": "parameter", "_buffers": "buffer"}
PARAMETRIZATIONS = ".parametrizations."  # torch.nn.utils.parametrize: <module>.parametrizations.<tensor>.original


@dataclass(frozen=True)
class ParameterName:
    """Where a parameter lives: its qualified name under the module `root` (a Dynamo source), or why not known."""

    qualified: str | None  # "blocks.0.ff.weight"; None when not recoverable
    root: str  # the source of the module it is relative to ("L['self']"), or "" for an FX-traced graph's root
    problem: str | None = None
    spelled: str = ""  # how Dynamo reached it: the label of a layer whose name is not recoverable
    parameter: Any = field(default=None, compare=False, repr=False)  # the nn.Parameter itself
    root_source: Any = field(default=None, compare=False, repr=False)  # Dynamo's source of the root module

    @property
    def linear_name(self) -> str:
        """The linear's name: the owning module for ``<module>.weight`` (``""`` for a bare `nn.Linear`) or for an
        original of its parametrized weight (``q.parametrizations.weight.original0``: ``q``), else the parameter's
        own qualified name; Dynamo's spelling where the name is not recoverable."""
        if self.qualified is None:
            return self.spelled
        module, marker, rest = f".{self.qualified}".partition(PARAMETRIZATIONS)
        if marker and "." in rest:
            return linear_name(f"{module}.{rest.split('.')[0]}".lstrip("."))
        return linear_name(self.qualified)

    @property
    def parametrized(self) -> bool:
        """Whether the parameter is an original of a parametrized tensor (`torch.nn.utils.parametrize`)."""
        return self.qualified is not None and PARAMETRIZATIONS in f".{self.qualified}"


def parameter_name(node: torch.fx.Node, gm: torch.fx.GraphModule) -> ParameterName | None:
    """The name of the parameter `node` holds; None when it is not a module parameter at all."""
    if node.op == "get_attr":  # an FX-traced graph keeps parameters as attributes of its root module
        parameter = _resolve(gm, str(node.target))
        if not isinstance(parameter, torch.nn.Parameter):
            return None
        source = _attribute_source(str(node.target))
        found = _from_source(source) if source is not None else None
        if found is not None:
            return replace(found, parameter=parameter)
        return ParameterName(str(node.target), "", parameter=parameter)
    if node.op != "placeholder":
        return None
    graph_arg = node.meta.get("grapharg")
    source = getattr(graph_arg, "source", None)
    parameter = getattr(graph_arg, "example", None)
    if source is None or not isinstance(parameter, torch.nn.Parameter):
        return None
    found = _from_source(source)
    return None if found is None else replace(found, parameter=parameter)


def _attribute_source(target: str) -> Any:
    """Dynamo's source of a parameter it installed as an attribute of the graph (Inductor's ``freezing``, under
    no_grad: ``L__self___blocks_0_ff_weight``), read from the compile in progress; None outside one."""
    try:
        from torch._dynamo.symbolic_convert import InstructionTranslator

        return InstructionTranslator.current_tx().output.param_name_to_source.get(target)
    except Exception:  # not inside Dynamo (an FX-traced graph), or a torch without this internal
        return None


def source_name(source: Any) -> str:
    name = source.name
    return name() if callable(name) else str(name)


def _from_source(source: Any) -> ParameterName | None:
    chain = [source]  # parameter first, root last
    while getattr(chain[-1], "base", None) is not None:
        chain.append(chain[-1].base)
    chain.reverse()
    # The outermost module: the base of the first wrapper marking a module (NNModuleSource and its variants).
    boundary = next((i for i, step in enumerate(chain) if type(step).__name__.endswith("NNModuleSource")), None)
    spelled = source_name(source)
    if boundary is None:
        return ParameterName(None, spelled, "the weight is not reached through a module", spelled)
    root, root_source = source_name(chain[boundary]), chain[boundary]
    steps = []
    for step in chain[boundary + 1:]:
        if type(step).__name__.endswith("NNModuleSource"):
            continue  # marks its base as a module; adds no name
        if hasattr(step, "member"):
            steps.append(("attribute", step.member))
        elif hasattr(step, "index"):
            steps.append(("item", step.index))
        else:
            return ParameterName(None, root, f"unknown step {type(step).__name__} in {spelled}", spelled)
    found = _interpret(steps, root, spelled)
    return None if found is None else replace(found, root_source=root_source)


def _interpret(steps: list[tuple[str, Any]], root: str, spelled: str) -> ParameterName | None:
    """Qualified name from the steps below the root module: ``._modules[k]``, ``.__dict__['_modules'][k]`` and
    ``.k`` name a submodule, ``._parameters[k]`` a parameter, ``[i]`` an entry of a ModuleList/ModuleDict."""
    parts, kind, index = [], None, 0
    while index < len(steps):
        step, key = steps[index]
        if step == "attribute" and key == "__dict__":  # .__dict__['_modules'] is ._modules
            if index + 1 < len(steps) and steps[index + 1][1] in _CONTAINERS:
                kind, index = _CONTAINERS[steps[index + 1][1]], index + 2
                continue
            return ParameterName(None, root, f"cannot read the name in {spelled}", spelled)
        if step == "attribute" and key in _CONTAINERS:
            kind = _CONTAINERS[key]
        elif step == "attribute" or isinstance(key, str) or (isinstance(key, int) and key >= 0):
            if kind == "buffer":
                return None  # a buffer is no parameter: not a linear's weight
            parts.append(str(key))
            kind = None
        else:  # a negative index or a slice: which entry it is depends on the container's length
            return ParameterName(None, root, f"cannot read the name in {spelled} (index {key!r})", spelled)
        index += 1
    if not parts:
        return ParameterName(None, root, f"cannot read the name in {spelled}", spelled)
    return ParameterName(".".join(parts), root, spelled=spelled)


def _resolve(root: torch.nn.Module, target: str) -> Any:
    value: Any = root
    for part in target.split("."):
        value = getattr(value, part, None)
    return value

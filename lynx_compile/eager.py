"""Running a model eagerly with some linears sparsified as lynx runs them: forward hooks that replace each chosen
layer's output by `method.sparse_linear_ref` (the reference the compiled op runs), for `calibrate`'s model
evaluations, the LoRA fit's statistics and the trajectory objective's sampler runs alike.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, Iterable, Iterator

import torch

from .lora import LoraAdapter
from .method import Method, cast_like_autocast, sparse_linear_ref, token_rows
from .progress import Progress

Call = tuple[tuple, dict]


def as_call(sample: Any) -> Call:
    """A sample is a dict of keyword arguments, a tuple of positional ones, or a single tensor."""
    if isinstance(sample, dict):
        return (), sample
    if isinstance(sample, tuple):
        return sample, {}
    return (sample,), {}


def as_calls(samples: Iterable[Any], caller: str) -> list[Call]:
    if isinstance(samples, (torch.Tensor, dict)):  # iterated, a tensor gives its rows and a dict its keys
        raise TypeError(f"{caller} takes samples as a list of calls (each a tensor, a tuple of positional arguments "
                        f"or a dict of keyword arguments), got a single {type(samples).__name__}: pass [sample]")
    calls = [as_call(sample) for sample in samples]
    if not calls:
        raise ValueError(f"{caller} needs at least one sample")
    return calls


def first_tensor(out: Any) -> torch.Tensor:
    """The model output's first tensor, which calibration bounds: the output itself, or the first found in a tuple,
    list or dict (in order), a dataclass's fields or a diffusers output's `sample`."""
    found = _first_tensor_in(out)
    if found is None:
        raise TypeError(f"the model's output holds no tensor to measure the error of (got {type(out).__name__})")
    return found


def _first_tensor_in(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):  # diffusers' outputs are ordered dicts too
        items = list(out.values())
    elif isinstance(out, (tuple, list)):
        items = list(out)
    elif dataclasses.is_dataclass(out) and not isinstance(out, type):
        items = [getattr(out, field.name) for field in dataclasses.fields(out)]
    elif isinstance(getattr(out, "sample", None), torch.Tensor):
        return out.sample
    else:
        return None
    return next((found for item in items if (found := _first_tensor_in(item)) is not None), None)


def linears_of(model: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    return {name: module for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def sparse_output(module: torch.nn.Linear, x: torch.Tensor, method: Method, adapter: LoraAdapter | None):
    """The layer's output as lynx runs it on x; None where it runs dense (too few tokens, K % m). Under autocast, as
    the compiled op (and F.linear) runs: its operands cast to the autocast dtype, computed and returned in it."""
    if not method.prunes(token_rows(x), module.in_features):
        return None
    weight, bias, device_type = module.weight, module.bias, x.device.type
    if torch.is_autocast_enabled(device_type):
        x, weight, bias = cast_like_autocast((x, weight, bias), device_type, torch.get_autocast_dtype(device_type))
    lora = None if adapter is None else (adapter.a.to(x), adapter.b.to(x))
    with torch.autocast(device_type, enabled=False):
        return sparse_linear_ref(x, weight, bias, method, lora)


def layer_input(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """A linear's input from its call: positional, or by keyword (`linear(input=x)`; a subclass's forward may name
    it otherwise: its first keyword); None for a call without one."""
    if args:
        return args[0]
    return kwargs.get("input", next(iter(kwargs.values()), None))


@contextlib.contextmanager
def hooked(modules: dict[str, torch.nn.Module], make_hook: Callable[[str], Callable]) -> Iterator[None]:
    """Forward hooks on the named modules for the duration of the block, under no_grad. A hook is called as
    ``hook(module, (x,), out)`` however the layer was given x (`layer_input`; not called where it had none)."""

    def register(module: torch.nn.Module, hook: Callable) -> torch.utils.hooks.RemovableHandle:
        def called(module: torch.nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
            x = layer_input(args, kwargs)
            return None if not isinstance(x, torch.Tensor) else hook(module, (x,), out)

        return module.register_forward_hook(called, with_kwargs=True)

    handles = [register(module, make_hook(name)) for name, module in modules.items()]
    try:
        with torch.no_grad():
            yield
    finally:
        for handle in handles:
            handle.remove()


def sparsified(layers: dict[str, torch.nn.Linear], method: Method,
               adapters: dict[str, LoraAdapter] | None = None) -> contextlib.AbstractContextManager:  # fmt: skip
    """Within the block, `layers` run sparsified (corrected where `adapters` has one), whoever calls them: a model's
    forward, or a sampler's or a pipeline's loop around it."""
    adapters = adapters or {}

    def make_hook(name: str) -> Callable:
        return lambda module, args, out: sparse_output(module, args[0], method, adapters.get(name))

    return hooked(layers, make_hook)


def run_calls(model: torch.nn.Module, calls: list[Call], progress: Progress | None) -> list[torch.Tensor]:
    outputs = []
    for args, kwargs in calls:
        outputs.append(first_tensor(model(*args, **kwargs)))
        if progress is not None:
            progress.advance()
    return outputs


def run_sparsified(
    model: torch.nn.Module,
    calls: list[Call],
    layers: dict[str, torch.nn.Linear],
    method: Method,
    adapters: dict[str, LoraAdapter] | None = None,
    progress: Progress | None = None,
) -> list[torch.Tensor]:
    """The model's outputs with `layers` sparsified as lynx runs them (and corrected where `adapters` has one)."""
    with sparsified(layers, method, adapters):
        return run_calls(model, calls, progress)

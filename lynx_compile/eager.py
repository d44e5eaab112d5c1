"""Running a model eagerly with some linears sparsified as lynx runs them: forward hooks that replace each chosen
layer's output by `method.sparse_linear_ref` (the reference the compiled op runs), for `calibrate`'s model
evaluations, the LoRA fit's statistics and the trajectory objective's sampler runs alike.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable, Iterator

import torch

from .lora import LoraAdapter
from .method import Method, sparse_linear_ref, token_rows
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
    calls = [as_call(sample) for sample in samples]
    if not calls:
        raise ValueError(f"{caller} needs at least one sample")
    return calls


def first_tensor(out: Any) -> torch.Tensor:
    while not isinstance(out, torch.Tensor):
        out = out[0] if isinstance(out, (tuple, list)) else out.sample
    return out


def linears_of(model: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    return {name: module for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def sparse_output(module: torch.nn.Linear, x: torch.Tensor, method: Method, adapter: LoraAdapter | None):
    """The layer's output as lynx runs it on x; None where it runs dense (too few tokens, K % m)."""
    if not method.prunes(token_rows(x), module.in_features):
        return None
    lora = None if adapter is None else (adapter.a.to(x), adapter.b.to(x))
    return sparse_linear_ref(x, module.weight, module.bias, method, lora)


@contextlib.contextmanager
def hooked(modules: dict[str, torch.nn.Module], make_hook: Callable[[str], Callable]) -> Iterator[None]:
    """Forward hooks on the named modules for the duration of the block, under no_grad."""
    handles = [module.register_forward_hook(make_hook(name)) for name, module in modules.items()]
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

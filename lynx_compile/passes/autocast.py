"""Which autocast regions a Dynamo graph's nodes run in, so that a linear is decided in the dtype it computes in.

Autocast entered outside the compiled function is global state when Dynamo traces (it guards on it, so the graph
only ever runs under that state); autocast entered inside it stays in the graph as `_enter_autocast` /
`_exit_autocast` calls. Replaying those over the state at compile time gives the autocast dtype in force at each
node, per device type. Under autocast `F.linear` casts mixed-dtype operands to that dtype, and so does
`lynx::sparse_linear` (`ops.py`); without it, operands of different dtypes are an error, not a layer to sparsify.
"""

from __future__ import annotations

import inspect

import torch
import torch.fx

_ENTER = torch.amp.autocast_mode._enter_autocast
_EXIT = torch.amp.autocast_mode._exit_autocast
_AUTOCAST_ARGUMENTS = inspect.signature(torch.amp.autocast.__init__)
_DEVICE_TYPES = ("cpu", "cuda")

State = dict[str, tuple[bool, torch.dtype]]  # device type -> (enabled, dtype)


def _current_state() -> State:
    return {device: (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)) for device in _DEVICE_TYPES}


def _entered(state: State, node: torch.fx.Node) -> State:
    bound = _AUTOCAST_ARGUMENTS.bind(None, *node.args, **node.kwargs)
    bound.apply_defaults()
    device, dtype, enabled = (bound.arguments[name] for name in ("device_type", "dtype", "enabled"))
    previous = state.get(device, (False, None))
    return {**state, device: (bool(enabled), dtype if dtype is not None else previous[1])}


def autocast_dtypes(graph: torch.fx.Graph) -> dict[torch.fx.Node, dict[str, torch.dtype]]:
    """For each node, the autocast dtype in force per device type (only the device types where it is enabled)."""
    state, stack, found = _current_state(), [], {}
    for node in graph.nodes:
        if node.op == "call_function" and node.target is _ENTER:
            stack.append(state)
            state = _entered(state, node)
        elif node.op == "call_function" and node.target is _EXIT and stack:
            state = stack.pop()
        found[node] = {device: dtype for device, (enabled, dtype) in state.items() if enabled}
    return found

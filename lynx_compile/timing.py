"""Timing as METHOD.md asks for it: CUDA-graph replays (launch overhead out), or host time included."""

from __future__ import annotations

import functools
import statistics
import time
from typing import Callable

import torch


def cuda_graph_ms(fn: Callable[[], object], calls_per_replay: int = 10, rep_ms: float = 100) -> float:
    """Median device time of one `fn()` call, from replays of a CUDA graph holding `calls_per_replay` calls."""
    from triton.testing import do_bench

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up (compiles, allocations) outside the capture
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls_per_replay):
            fn()
    return do_bench(graph.replay, warmup=rep_ms / 4, rep=rep_ms, return_mode="median") / calls_per_replay


def host_included_ms(fn: Callable[[], object], calls: int = 20, device: torch.device | None = None,
                     rounds: int = 3) -> float:  # fmt: skip
    """Time of one `fn()` call as a program without CUDA graphs sees it, host work included: the mean over `calls`
    calls, median of `rounds` rounds (one round decided layers near `min_speedup` differently from run to run)."""
    synchronize = torch.cuda.synchronize if device is None or device.type == "cuda" else (lambda: None)
    fn()
    synchronize()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        synchronize()
        times.append((time.perf_counter() - start) * 1e3 / calls)
    return statistics.median(times)


def timer_for(cuda_graphs: bool, device: torch.device) -> Callable[[Callable[[], object]], float]:
    """The speed rule's clock on `device`: CUDA-graph replays (20 ms of them) if the compile uses CUDA graphs, else
    host time."""
    if cuda_graphs and device.type == "cuda":
        return functools.partial(cuda_graph_ms, rep_ms=20)
    return functools.partial(host_included_ms, device=device)

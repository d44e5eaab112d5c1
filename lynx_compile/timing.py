"""Timing as the project measures (warm-up, medians): CUDA-graph replays (launch overhead out), or host time
included."""

from __future__ import annotations

import functools
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
    calls of the fastest of `rounds` rounds. Each round starts and ends with the device idle, so a round is never
    faster than the calls themselves; what makes one slower only adds time (Inductor's compile workers, which run
    while lynx measures the next graph's layers, other processes), so the fastest round is the calls' own time.
    A median of three rounds still decided host-bound layers by the interference: FLUX's text-stream q, k, v
    measured 0.48–0.55× in four runs and ≥ 1.05× in a fifth (benchmarks/RESULTS.md, session 15)."""
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
    return min(times)


def timer_for(cuda_graphs: bool, device: torch.device) -> Callable[[Callable[[], object]], float]:
    """The speed rule's clock on `device`: CUDA-graph replays (20 ms of them) if the compile uses CUDA graphs, else
    host time."""
    if cuda_graphs and device.type == "cuda":
        return functools.partial(cuda_graph_ms, rep_ms=20)
    return functools.partial(host_included_ms, device=device)

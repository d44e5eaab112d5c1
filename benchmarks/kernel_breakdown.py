"""Where a forward's GPU time goes, by kind of kernel: torch.profiler's CUDA kernel times over a few calls, grouped
by what each kernel is (its name), per call.

    python benchmarks/bench_e2e.py flux no-graphs dense,fp8,fp8_lynx --profile   # one table per variant

Profile without CUDA graphs: a graph's replay is one launch to the profiler, its kernels not always listed. The
kinds are told apart by name only (first match wins, `KINDS`), so a kernel of a kind not listed counts as "other";
the table's "top kernels" says what those are.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable

import torch

KINDS = (  # (kind, pattern over a kernel's name)
    ("lynx (Triton)", r"_single_pass_kernel|_compress_kernel|_row_scale_kernel|_statistics_kernel|_inverse_kernel"
                      r"|_norm_kernel|_quantize_kernel|_nm_prune_kernel|_written_out_kernel|_activation_kernel"),
    ("Inductor (Triton)", r"^triton_"),  # before the others: its names list the ops a kernel feeds (attention...)
    ("sparse GEMM", r"[Ss]parse|cusparselt"),
    ("attention", r"flash|fmha|attention|sdpa|_mha_"),
    ("dense GEMM", r"gemm|nvjet|xmma|cutlass|cublas|sm90_"),
    ("memory copy / set", r"^Memcpy|^Memset|memcpy|memset"),
)


def kind_of(name: str) -> str:
    for kind, pattern in KINDS:
        if re.search(pattern, name):
            return kind
    return "other"


def _device_time_us(event) -> float:
    """An averaged event's own device time, µs (torch renamed the field from `cuda` to `device`)."""
    return getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0.0)


def kernel_breakdown(fn: Callable[[], object], calls: int = 3, top: int = 12) -> dict:
    """{"per_call_ms": {kind: ms}, "total_ms": ..., "top": [[name, kind, ms per call], ...]} of `fn`'s kernels, one
    warm-up call first."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profiler:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    per_name = {}
    for event in profiler.key_averages():
        us = _device_time_us(event)
        if us > 0:
            per_name[event.key] = per_name.get(event.key, 0.0) + us / 1e3 / calls
    per_kind: dict[str, float] = {}
    for name, ms in per_name.items():
        per_kind[kind_of(name)] = per_kind.get(kind_of(name), 0.0) + ms
    largest = sorted(per_name.items(), key=lambda item: -item[1])[:top]
    return {"per_call_ms": dict(sorted(per_kind.items(), key=lambda item: -item[1])),
            "total_ms": sum(per_name.values()),
            "top": [[name[:120], kind_of(name), ms] for name, ms in largest]}  # fmt: skip


def format_breakdowns(breakdowns: dict[str, dict]) -> str:
    """One column per variant, one row per kind (ms per call), then each variant's largest kernels."""
    kinds = sorted({kind for b in breakdowns.values() for kind in b["per_call_ms"]},
                   key=lambda kind: -max(b["per_call_ms"].get(kind, 0.0) for b in breakdowns.values()))  # fmt: skip
    lines = [f"{'GPU ms a call, by kernel kind':32}" + "".join(f"{variant:>12}" for variant in breakdowns)]
    for kind in [*kinds, "total"]:
        values = [b["total_ms"] if kind == "total" else b["per_call_ms"].get(kind, 0.0) for b in breakdowns.values()]
        lines.append(f"{kind:32}" + "".join(f"{value:12.2f}" for value in values))
    for variant, b in breakdowns.items():
        lines.append(f"\n{variant}: largest kernels (ms a call)")
        lines += [f"  {ms:8.3f}  {kind:18} {name[:90]}" for name, kind, ms in b["top"]]
    return "\n".join(lines)


def kernel_timeline(fn: Callable[[], object], calls: int = 3, top: int = 8) -> dict:
    """Where a forward's GPU clock goes between kernels, one warm-up call first: per call (its own profiler
    session, the median call kept) the span from the first kernel's start to the last's end, the time kernels run
    (`busy_ms`) and the GPU idle between them (`idle_ms`), that idle by (kind before → kind after) and by size.
    Works with CUDA graphs where the profiler lists a replay's kernels (CUPTI does on CUDA 12+; `kernels` says how
    many it saw), which `kernel_breakdown` does not assume; and the kernels' time by kind, as they ran."""
    fn()
    torch.cuda.synchronize()
    per_call = []
    for _ in range(calls):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profiler:
            fn()
            torch.cuda.synchronize()
        with tempfile.NamedTemporaryFile(suffix=".json") as trace:
            profiler.export_chrome_trace(trace.name)
            events = json.load(open(trace.name))["traceEvents"]
        kernels = sorted((e["ts"], e["ts"] + e.get("dur", 0.0), e["name"]) for e in events
                         if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset"))  # fmt: skip
        per_call.append(_timeline(kernels, top))
    per_call.sort(key=lambda call: call["span_ms"])
    return per_call[len(per_call) // 2]


def _timeline(kernels: list[tuple[float, float, str]], top: int) -> dict:
    if not kernels:
        return {"kernels": 0, "span_ms": 0.0, "busy_ms": 0.0, "idle_ms": 0.0, "kernel_ms": {}, "transitions": [],
                "by_size": {}}
    busy, idle, by_transition, by_kind = 0.0, 0.0, {}, {}
    by_size = {"< 2 µs": [0, 0.0], "2–5 µs": [0, 0.0], "5–20 µs": [0, 0.0], "≥ 20 µs": [0, 0.0]}
    end = kernels[0][0]
    previous = "start"
    for start, stop, name in kernels:
        gap = max(0.0, start - end)
        kind = kind_of(name)
        by_kind[kind] = by_kind.get(kind, 0.0) + (stop - start) / 1e3
        if previous != "start":
            idle += gap
            entry = by_transition.setdefault(f"{previous} → {kind}", [0, 0.0])
            entry[0], entry[1] = entry[0] + 1, entry[1] + gap
            size = "< 2 µs" if gap < 2 else "2–5 µs" if gap < 5 else "5–20 µs" if gap < 20 else "≥ 20 µs"
            by_size[size][0], by_size[size][1] = by_size[size][0] + 1, by_size[size][1] + gap
        busy += stop - max(start, end) if stop > end else 0.0
        end, previous = max(end, stop), kind
    transitions = sorted(by_transition.items(), key=lambda item: -item[1][1])[:top]
    return {"kernels": len(kernels), "span_ms": (end - kernels[0][0]) / 1e3, "busy_ms": busy / 1e3,
            "idle_ms": idle / 1e3, "kernel_ms": dict(sorted(by_kind.items(), key=lambda item: -item[1])),
            "transitions": [[name, count, total / 1e3, total / count] for name, (count, total) in transitions],
            "by_size": {size: [count, total / 1e3] for size, (count, total) in by_size.items()}}  # fmt: skip


def format_timelines(timelines: dict[str, dict]) -> str:
    """Per variant: kernels, span, busy and idle (ms), kernel time by kind, the idle by gap size, the transitions
    that idle most."""
    lines = [f"{'GPU timeline of a call':32}" + "".join(f"{variant:>12}" for variant in timelines)]
    for key in ("kernels", "span_ms", "busy_ms", "idle_ms"):
        lines.append(f"{key:32}" + "".join(f"{t[key]:12.2f}" for t in timelines.values()))
    kinds = sorted({kind for t in timelines.values() for kind in t["kernel_ms"]})
    for kind in kinds:
        lines.append(f"{'ms in ' + kind:32}" + "".join(f"{t['kernel_ms'].get(kind, 0.0):12.2f}"
                                                      for t in timelines.values()))  # fmt: skip
    for size in next(iter(timelines.values()))["by_size"]:
        lines.append(f"{'idle ms in gaps ' + size:32}" + "".join(
            f"{t['by_size'][size][1]:7.2f} ({t['by_size'][size][0]:>4})" if size in t["by_size"] else ""
            for t in timelines.values()))  # fmt: skip
    for variant, t in timelines.items():
        lines.append(f"\n{variant}: idle by transition (count, ms a call, µs a gap)")
        lines += [f"  {name:44} {count:5} {ms:8.3f} {us:8.2f}" for name, count, ms, us in t["transitions"]]
    return "\n".join(lines)

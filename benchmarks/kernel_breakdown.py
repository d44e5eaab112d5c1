"""Where a forward's GPU time goes, by kind of kernel: torch.profiler's CUDA kernel times over a few calls, grouped
by what each kernel is (its name), per call.

    python benchmarks/bench_e2e.py flux no-graphs dense,fp8,fp8_lynx --profile   # one table per variant

Profile without CUDA graphs: a graph's replay is one launch to the profiler, its kernels not always listed. The
kinds are told apart by name only (first match wins, `KINDS`), so a kernel of a kind not listed counts as "other";
the table's "top kernels" says what those are.
"""

from __future__ import annotations

import re
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

"""PNG plots of the benchmark JSON (matplotlib, present on the GPU machine; skipped with a note where it is not).

    python benchmarks/plots.py bench_linear.json     # re-plot a saved run
"""

from __future__ import annotations

import json
import os
import sys


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot written")
        return None
    return plt


def plot_linear(rows: list[dict], title: str, path: str) -> None:
    """Per shape: dense / variant for the whole lynx layer, in-model, unfused torch, and the GEMM-alone ceiling."""
    plt = _pyplot()
    if plt is None:
        return
    series = [("x_lynx", "lynx layer"), ("x_lynx_in_model", "lynx, bias fused downstream"),
              ("x_unfused", "unfused torch pipeline"), ("x_gemm_only", "cuSPARSELt GEMM alone (ceiling)")]  # fmt: skip
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(8, len(rows) * 0.9), 4.5))
    for i, (key, label) in enumerate(series):
        ax.bar([x + i * width for x in range(len(rows))], [r[key] for r in rows], width, label=label)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(rows))], [r["shape"] for r in rows], rotation=35,
                  ha="right", fontsize=8)  # fmt: skip
    ax.set_ylabel("speed vs cuBLAS dense (×)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print("wrote", path)


def plot_e2e(rows: list[dict], title: str, path: str) -> None:
    """Forward time, Inductor dense vs lynx, per model and CUDA-graph mode."""
    plt = _pyplot()
    if plt is None:
        return
    labels = [f"{r['model']}\n{'CUDA graphs' if r['cuda_graphs'] else 'no graphs'}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(5, len(rows) * 1.6), 4))
    ax.bar([x - 0.2 for x in range(len(rows))], [r["dense_ms"] for r in rows], 0.4, label="Inductor dense")
    ax.bar([x + 0.2 for x in range(len(rows))], [r["lynx_ms"] for r in rows], 0.4, label="lynx sparse")
    for x, r in enumerate(rows):
        ax.annotate(f"{r['speedup']:.3f}×", (x + 0.2, r["lynx_ms"]), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set_ylabel("forward time (ms)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print("wrote", path)


if __name__ == "__main__":
    data = json.load(open(sys.argv[1]))
    stem = os.path.splitext(sys.argv[1])[0]
    title = f"{data['device']}, torch {data['torch']}"
    if "x_lynx" in data["rows"][0]:
        plot_linear(data["rows"], title, stem + ".png")
    else:
        plot_e2e(data["rows"], title, stem + ".png")

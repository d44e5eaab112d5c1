"""bench_e2e.py in several fresh processes: how far each variant's end-to-end ratio moves from process to process.

    python benchmarks/bench_e2e_processes.py PROCESSES CASE [graphs|no-graphs] [VARIANTS] [--budget-s SECONDS]

Session 20 timed FLUX.1's FP8 forward under lynx at 90.4–98.4 ms from one process to the next on one machine, and
torchao's float8 at 101–114 ms, while dense bf16 stayed within 1% (RESULTS.md): one process a variant cannot show a
change of a few percent. This runs bench_e2e.py PROCESSES times, each in a fresh process, and reports each variant's
ratio over its baseline (both timed in that process, interleaved, as bench_e2e.py does) per process, with the
median and the range over processes. The processes share one LYNX_CACHE_DIR (the caller's, else a new one) and
Inductor's cache: the later ones reuse the first one's speed-rule measurements, so they take the same decisions and
compile in a fraction of the time. A process is not started where one as long as the last would not finish inside
--budget-s. Writes bench_e2e_processes_<case>.json to $OUT (every process's rows and the spread); each process's
own JSON and log go to $OUT/process_<i>/.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def spread(runs: list[list[dict]]) -> list[dict]:
    """Per (model, graph mode, variant): the variant's ms and its ratio over its baseline in each process, and the
    median and range of that ratio over the processes (`runs`: each process's bench_e2e rows)."""
    found: dict[tuple, dict] = {}
    for rows in runs:
        for row in rows:
            for variant, over in row["baselines"].items():
                entry = found.setdefault((row["model"], row["cuda_graphs"], variant), {
                    "model": row["model"], "cuda_graphs": row["cuda_graphs"], "variant": variant, "over": over,
                    "ms": [], "over_ms": [], "ratio": []})  # fmt: skip
                if entry["over"] != over:  # a process that timed no fp8 gives fp8_lynx over dense
                    raise ValueError(f"{variant} is over {over} in one process and {entry['over']} in another")
                entry["ms"].append(row[f"{variant}_ms"])
                entry["over_ms"].append(row[f"{over}_ms"])
                entry["ratio"].append(row[f"speedup_{variant}"])
    for entry in found.values():
        ratios = entry["ratio"]
        entry.update(processes=len(ratios), median_ratio=statistics.median(ratios), min_ratio=min(ratios),
                     max_ratio=max(ratios))  # fmt: skip
    return list(found.values())


def format_spread(entries: list[dict]) -> str:
    lines = [f"{'model':10} {'graphs':>6} {'variant':>10} {'over':>6} {'n':>2} {'median':>7} {'min':>6} {'max':>6}"
             "   ms (variant / baseline) by process"]  # fmt: skip
    for e in entries:
        times = ", ".join(f"{ms:.1f}/{over:.1f}" for ms, over in zip(e["ms"], e["over_ms"]))
        lines.append(f"{e['model']:10} {str(e['cuda_graphs']):>6} {e['variant']:>10} {e['over']:>6} "
                     f"{e['processes']:2d} {e['median_ratio']:7.3f} {e['min_ratio']:6.3f} {e['max_ratio']:6.3f}   "
                     f"{times}")  # fmt: skip
    return "\n".join(lines)


def run_processes(processes: int, bench_args: list[str], out: Path, budget_s: float) -> list[list[dict]]:
    """bench_e2e.py `processes` times, one fresh process after another, while the budget allows another."""
    env = dict(os.environ)
    env.setdefault("LYNX_CACHE_DIR", tempfile.mkdtemp(prefix="lynx_cache_"))
    runs, last, started = [], 0.0, time.perf_counter()
    for index in range(processes):
        left = budget_s - (time.perf_counter() - started)
        if runs and last > left:  # the last, not the first: that one filled the caches
            print(f"process {index}: not started ({left:.0f} s left, the last took {last:.0f} s)", flush=True)
            break
        directory = out / f"process_{index}"
        directory.mkdir(parents=True, exist_ok=True)
        began = time.perf_counter()
        with open(directory / "bench_e2e.log", "w") as log:
            done = subprocess.run([sys.executable, str(HERE / "bench_e2e.py"), *bench_args],
                                  env={**env, "OUT": str(directory)}, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        took = last = time.perf_counter() - began
        results = list(directory.glob("bench_e2e_*.json"))
        if done.returncode or not results:
            print(f"process {index}: failed (exit {done.returncode}) after {took:.0f} s; see {directory}", flush=True)
            break
        runs.append(json.loads(results[0].read_text())["rows"])
        print(f"process {index}: {took:.0f} s", flush=True)
    return runs


def main() -> None:
    args = sys.argv[1:]
    budget_s = float("inf")
    if "--budget-s" in args:
        at = args.index("--budget-s")
        budget_s = float(args[at + 1])
        del args[at : at + 2]
    if len(args) < 2 or not args[0].isdigit():
        raise SystemExit(__doc__)
    out = Path(os.environ.get("OUT", "/tmp"))
    runs = run_processes(int(args[0]), args[1:], out, budget_s)
    entries = spread(runs)
    (out / f"bench_e2e_processes_{args[1]}.json").write_text(
        json.dumps({"args": args, "processes": runs, "spread": entries}, indent=1))
    print(format_spread(entries))


if __name__ == "__main__":
    main()

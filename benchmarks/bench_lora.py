"""How much of the pruning error the closed-form LoRA correction removes, per layer, and what fitting costs.

    python benchmarks/bench_lora.py tiny    # CPU, a minute: the project's trained tiny DiT
    python benchmarks/bench_lora.py flux    # GPU: full-size FLUX.1 blocks with random weights, bf16, 1024²

Per linear, relative output error of the layer on *held-out* samples (fitted on one set of inputs, measured on
another): naive 2:4 → + norm compensation → + norm + LoRA of rank 8, 32, 64 (from one rank-64 fit: lower ranks are
its prefixes), plus the in-sample rank-64 error. `flux` also fits a few layers the paper's way — Adam on the same
objective over minibatches of the captured tokens, a fixed number of steps — and compares time and error reached.
Prints tables; writes bench_lora_<model>.json into $OUT.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import sys
import time

import torch
from tqdm.auto import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lynx_compile.calibration import collect_statistics  # noqa: E402
from lynx_compile.eager import as_call  # noqa: E402
from lynx_compile.lora import adapter_error, solve_lora  # noqa: E402
from lynx_compile.method import Method, pruning_residual  # noqa: E402

RANKS = (8, 32, 64)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def layer_table(model, fit_samples, eval_samples, names, min_tokens) -> list[dict]:
    """The error table rows for the named linears (statistics held for all of them at once)."""
    linears = {name: module for name, module in model.named_modules() if name in names}
    fit_calls, eval_calls = [as_call(s) for s in fit_samples], [as_call(s) for s in eval_samples]
    naive = collect_statistics(model, eval_calls, linears, Method(2, 4, False, min_tokens))
    held_out = collect_statistics(model, eval_calls, linears, Method(2, 4, True, min_tokens))
    sync()
    started = time.perf_counter()
    fit = collect_statistics(model, fit_calls, linears, Method(2, 4, True, min_tokens))
    sync()
    statistics_s = (time.perf_counter() - started) / max(len(fit), 1)
    rows = []
    for name in tqdm(names, desc="bench_lora: solve", unit="layer"):
        if name not in fit:
            continue
        weight = linears[name].weight
        sync()
        started = time.perf_counter()
        solution = solve_lora(weight, fit[name], max(RANKS))
        sync()
        rows.append({
            "layer": name, "ridge": solution.ridge, "fitted_rank": solution.rank, "K": weight.shape[1], "N": weight.shape[0], "tokens": fit[name].tokens,
            "naive": adapter_error(naive[name], weight, None), "norm": adapter_error(held_out[name], weight, None),
            **{f"lora{r}": adapter_error(held_out[name], weight, solution.adapter_at(r)) for r in RANKS},
            "lora64_in_sample": solution.error_at(64),
            "solve_s": time.perf_counter() - started, "statistics_s_per_layer": statistics_s,
        })  # fmt: skip
    return rows


def print_rows(rows: list[dict]) -> None:
    print(f"{'layer':48} {'K→N':>11} {'naive':>6} {'+norm':>6} " + " ".join(f"{'+r' + str(r):>6}" for r in RANKS)
          + f" {'r64 in':>6} {'solve s':>7}")  # fmt: skip
    for r in rows:
        print(f"{r['layer']:48} {str(r['K']) + '→' + str(r['N']):>11} {r['naive']:6.3f} {r['norm']:6.3f} "
              + " ".join(f"{r[f'lora{k}']:6.3f}" for k in RANKS) + f" {r['lora64_in_sample']:6.3f} {r['solve_s']:7.2f}")


def print_by_role(rows: list[dict]) -> None:
    roles: dict[str, list[dict]] = {}
    for row in rows:
        roles.setdefault(re.sub(r"\.\d+\.", ".*.", row["layer"]), []).append(row)
    ranks = " ".join(f"{'+r' + str(r):>6}" for r in RANKS)
    print(f"\n{'median by layer role':48} {'n':>3} {'naive':>6} {'+norm':>6} {ranks}")
    for role, group in roles.items():
        med = {key: statistics.median(r[key] for r in group) for key in ("naive", "norm", *(f"lora{k}" for k in RANKS))}
        print(f"{role:48} {len(group):3d} {med['naive']:6.3f} {med['norm']:6.3f} "
              + " ".join(f"{med[f'lora{k}']:6.3f}" for k in RANKS))


def capture_inputs(model, samples, name):
    module = dict(model.named_modules())[name]
    rows = []
    handle = module.register_forward_pre_hook(lambda mod, args: rows.append(args[0].reshape(-1, mod.in_features)))
    with torch.no_grad():
        for sample in samples:
            args, kwargs = as_call(sample)
            model(*args, **kwargs)
    handle.remove()
    return torch.cat(rows), module.weight


def fit_adam(x, weight, rank, steps, lr, batch=4096):
    """The paper's recipe on one layer: Adam on mean ‖d·Wᵀ − (x·Bᵀ)·Aᵀ‖² over minibatches, A = 0 at the start."""
    generator = torch.Generator(device=x.device).manual_seed(0)
    w = weight.float()
    a = torch.zeros(w.shape[0], rank, device=x.device, requires_grad=True)
    b = (torch.randn(rank, w.shape[1], device=x.device, generator=generator) / w.shape[1] ** 0.5).requires_grad_()
    optimiser = torch.optim.Adam([a, b], lr=lr)
    for _ in tqdm(range(steps), desc="bench_lora: Adam", unit="step", leave=False):
        index = torch.randint(0, x.shape[0], (batch,), device=x.device, generator=generator)
        xb = x[index]
        target = pruning_residual(xb, Method()).float() @ w.t()
        loss = (target - (xb.float() @ b.t()) @ a.t()).square().mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    return a.detach(), b.detach()


def held_out_error(x, weight, a, b) -> float:
    d = pruning_residual(x, Method())
    w = weight.double()
    dense = x.double() @ w.t()
    correction = (x.double() @ b.double().t()) @ a.double().t()
    return ((d @ w.t() - correction).norm() / dense.norm()).item()


def run_tiny() -> dict:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))
    from tiny_dit import calibration_inputs, load_model

    model = load_model()
    labels = torch.arange(80) % 10
    noise = torch.randn(80, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    fit, held = calibration_inputs(labels[:40], noise[:40]), calibration_inputs(labels[40:], noise[40:])
    names = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    rows = layer_table(model, fit, held, names, min_tokens=1)
    print_rows(rows)
    print_by_role(rows)
    return {"rows": rows}


def run_flux() -> dict:
    from bench_e2e import flux_case

    model, inputs = flux_case()
    held = {**inputs, "hidden_states": torch.randn_like(inputs["hidden_states"]),
            "encoder_hidden_states": torch.randn_like(inputs["encoder_hidden_states"])}  # fmt: skip
    blocks = ("transformer_blocks.0.", "single_transformer_blocks.0.")
    names = [name for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and name.startswith(blocks)]  # fmt: skip
    rows = []
    for block in blocks:  # one block's statistics at a time: up to 2.4 GB each for K = 12288
        rows += layer_table(model, [inputs], [held], [n for n in names if n.startswith(block)], min_tokens=16)
        torch.cuda.empty_cache()
    print_rows(rows)
    print_by_role(rows)

    comparisons = []
    for name in ("transformer_blocks.0.attn.to_out.0", "transformer_blocks.0.ff.net.2",
                 "single_transformer_blocks.0.proj_mlp"):  # fmt: skip
        x_fit, weight = capture_inputs(model, [inputs], name)
        x_held, _ = capture_inputs(model, [held], name)
        closed = next(row for row in rows if row["layer"] == name)
        for steps, lr in ((2000, 1e-3), (2000, 1e-2)):
            sync()
            started = time.perf_counter()
            a, b = fit_adam(x_fit, weight, 64, steps, lr)
            sync()
            comparisons.append({"layer": name, "steps": steps, "lr": lr, "adam_s": time.perf_counter() - started,
                                "adam_error": held_out_error(x_held, weight, a, b),
                                "closed_form_error": closed["lora64"], "norm_error": closed["norm"],
                                "closed_form_s": closed["solve_s"] + closed["statistics_s_per_layer"]})  # fmt: skip
    print(f"\n{'rank-64 fit, held-out error':44} {'+norm':>6} {'closed':>7} {'s':>6} {'Adam':>7} {'steps':>6} "
          f"{'lr':>6} {'s':>6}")  # fmt: skip
    for c in comparisons:
        print(f"{c['layer']:44} {c['norm_error']:6.3f} {c['closed_form_error']:7.3f} {c['closed_form_s']:6.2f} "
              f"{c['adam_error']:7.3f} {c['steps']:6d} {c['lr']:6.0e} {c['adam_s']:6.2f}")  # fmt: skip
    return {"rows": rows, "adam": comparisons}


def main() -> None:
    which = sys.argv[1] if len(sys.argv) > 1 else "tiny"
    result = {"tiny": run_tiny, "flux": run_flux}[which]()
    meta = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "torch": torch.__version__}
    with open(os.path.join(os.environ.get("OUT", "/tmp"), f"bench_lora_{which}.json"), "w") as f:
        json.dump({**meta, **result}, f, indent=1)


if __name__ == "__main__":
    main()

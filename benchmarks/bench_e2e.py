"""One transformer forward, end to end: Inductor dense vs lynx sparse, with and without CUDA graphs.

    python benchmarks/bench_e2e.py [flux|dit|all]     # on an sm_90 GPU with diffusers; writes bench_e2e.json to $OUT

- flux: full-size FluxTransformer2DModel config (19 double + 38 single blocks, hidden 3072), random weights, bf16,
  1024² (4096 image + 512 text tokens), batch 1;
- dit: DiT-XL/2 at 256² (28 blocks, hidden 1152), batch 8 (2048 tokens), bf16: the shape where lynx must not lose.
Weights are random (built on the meta device, materialised on the GPU with N(0, 0.02)): speed does not depend on
them. FLUX compiles block by block (diffusers' `compile_repeated_blocks`), dense with `backend="inductor"`,
lynx with `backend="lynx", options={"execution": "sparse"}`; "graphs" adds `triton.cudagraphs`. (DiT has no
`_repeated_blocks` in diffusers: it compiles whole.) Each forward is
timed with CUDA events, median of 10 after 3 warm-ups, twice round interleaved with the other variants (the lower
median counts); ratios are dense / lynx in the same graph mode. `lynx_dense` (lynx with execution="dense") can be
added to a case's variants to see what the backend costs by itself.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import sys
import time

import torch
from tqdm.auto import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lynx_compile  # noqa: E402
from plots import plot_e2e  # noqa: E402


def materialise(model: torch.nn.Module) -> torch.nn.Module:
    """Random N(0, 0.02) weights on the GPU, bf16 (a model built on the meta device gets its storage here)."""
    model = model.to_empty(device="cuda")
    generator = torch.Generator(device="cuda").manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.02, generator=generator)
    return model.to(torch.bfloat16).eval()


def flux_case():
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        model = FluxTransformer2DModel(guidance_embeds=True)
    model = materialise(model)
    g = torch.Generator(device="cuda").manual_seed(1)
    image, text = 4096, 512
    ids = torch.zeros(64, 64, 3, device="cuda")
    ids[..., 1] = torch.arange(64, device="cuda")[:, None]
    ids[..., 2] = torch.arange(64, device="cuda")[None, :]
    bf16 = dict(device="cuda", dtype=torch.bfloat16, generator=g)
    inputs = dict(
        hidden_states=torch.randn(1, image, 64, **bf16), encoder_hidden_states=torch.randn(1, text, 4096, **bf16),
        pooled_projections=torch.randn(1, 768, **bf16), timestep=torch.full((1,), 0.5, device="cuda"),
        img_ids=ids.reshape(-1, 3), txt_ids=torch.zeros(text, 3, device="cuda"),
        guidance=torch.full((1,), 3.5, device="cuda"), return_dict=False,
    )  # fmt: skip
    return model, inputs


def dit_case():
    from diffusers import DiTTransformer2DModel

    with torch.device("meta"):
        model = DiTTransformer2DModel(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8,
                                      num_layers=28, sample_size=32, patch_size=2,
                                      num_embeds_ada_norm=1000)  # fmt: skip
    model = materialise(model)
    g = torch.Generator(device="cuda").manual_seed(1)
    inputs = dict(hidden_states=torch.randn(8, 4, 32, 32, device="cuda", dtype=torch.bfloat16, generator=g),
                  timestep=torch.randint(0, 1000, (8,), device="cuda", generator=g),
                  class_labels=torch.randint(0, 1000, (8,), device="cuda", generator=g), return_dict=False)  # fmt: skip
    return model, inputs


def compile_model(model: torch.nn.Module, **compile_kwargs) -> torch.nn.Module:
    """Block by block where diffusers names the repeated blocks (FLUX), else the whole model (DiT)."""
    if getattr(model, "_repeated_blocks", None):
        model.compile_repeated_blocks(**compile_kwargs)
        return model
    return torch.compile(model, **compile_kwargs)


def forward(model: torch.nn.Module, inputs: dict):
    # With CUDA graphs per block, each forward is one step: outputs of the last may be overwritten by the next.
    torch.compiler.cudagraph_mark_step_begin()
    return model(**inputs)


def time_forward_ms(fn, warmup: int = 3, runs: int = 10) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


VARIANTS = {
    "dense": dict(backend="inductor"),
    "lynx": dict(backend="lynx", options={"execution": "sparse"}),
    # lynx with every layer dense: the backend's own cost, apart from the sparse layers' effect
    "lynx_dense": dict(backend="lynx", options={"execution": "dense"}),
}


def run_case(name: str, build, variants: tuple[str, ...]) -> list[dict]:
    """Compile every variant first, then time them interleaved, twice round: no variant gets a quieter machine."""
    rows = []
    for graphs in (False, True):
        compiled = {}
        torch.compiler.reset()
        for variant in (bar := tqdm(variants, desc=f"bench_e2e {name} graphs={graphs}: compile", unit="variant")):
            bar.set_postfix_str(variant)
            model, inputs = build()
            kwargs = dict(VARIANTS[variant])
            options = {**kwargs.pop("options", {}), **({"triton.cudagraphs": True} if graphs else {})}
            model = compile_model(model, **kwargs, options=options or None)
            started = time.perf_counter()
            with torch.no_grad(), lynx_compile.collect_reports() as report:
                forward(model, inputs)
            tqdm.write(f"{name} graphs={graphs} {variant}: compiled in {time.perf_counter() - started:.0f} s; "
                       f"{report.summary() if report.layers else 'no lynx report'}")  # fmt: skip
            if variant == "lynx":
                for reason in sorted({(layer.decision, layer.reason) for layer in report.layers})[:10]:
                    tqdm.write(f"    {reason}")
            compiled[variant] = (model, inputs)
        times = {variant: [] for variant in variants}
        for _ in tqdm(range(2), desc=f"bench_e2e {name} graphs={graphs}: time", unit="round"):
            for variant, (model, inputs) in compiled.items():
                with torch.no_grad():
                    times[variant].append(time_forward_ms(lambda: forward(model, inputs)))
        best = {variant: min(ms) for variant, ms in times.items()}
        print(f"{name} graphs={graphs}: " + ", ".join(f"{v} {ms}" for v, ms in times.items()), flush=True)
        rows.append({"model": name, "cuda_graphs": graphs, **{f"{v}_ms": t for v, t in best.items()},
                     "speedup": best["dense"] / best["lynx"]})  # fmt: skip
        compiled.clear()
        model = inputs = None  # the last round's models must go before the next round builds two more
        torch.compiler.reset()  # Dynamo's caches hold the compiled modules too
        gc.collect()
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    cases = {"flux": (flux_case, ("dense", "lynx")), "dit": (dit_case, ("dense", "lynx"))}
    rows = []
    for name, (build, variants) in cases.items():
        if which in (name, "all"):
            rows += run_case(name, build, variants)
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    out_dir = os.environ.get("OUT", "/tmp")
    with open(os.path.join(out_dir, f"bench_e2e_{which}.json"), "w") as f:
        json.dump({**meta, "rows": rows}, f, indent=1)
    plot_e2e(rows, f"{meta['device']}, torch {meta['torch']}, bf16", os.path.join(out_dir, f"bench_e2e_{which}.png"))
    print(f"\n{meta}\n{'model':6} {'graphs':>6} {'dense ms':>9} {'lynx ms':>9} {'×':>6}")
    for r in rows:
        print(f"{r['model']:6} {str(r['cuda_graphs']):>6} {r['dense_ms']:9.2f} {r['lynx_ms']:9.2f} {r['speedup']:6.3f}")


if __name__ == "__main__":
    main()

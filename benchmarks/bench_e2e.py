"""One transformer forward, end to end: Inductor dense vs lynx sparse, with and without CUDA graphs.

    python benchmarks/bench_e2e.py [flux|wan|qwen_image|z_image|dit|all] [graphs|no-graphs] [dense,lynx,lynx_mixed]
                                   [--profile] [--timeline] [--no-dense]

- flux: full-size FluxTransformer2DModel config (19 double + 38 single blocks, hidden 3072), random weights, bf16,
  1024² (4096 image + 512 text tokens), batch 1;
- wan: Wan2.1-14B's WanTransformer3DModel config (hidden 5120, FFN 13824) with 8 of its 40 blocks, 480×832, 33
  frames: 9 × 30 × 52 = 14040 video tokens (not a multiple of 16) + 512 text tokens, batch 1;
- qwen_image: QwenImageTransformer2DModel's config with 20 of its 60 blocks, 1024² (4096 image + 256 text tokens);
- z_image: ZImageTransformer2DModel's config (hidden 3840, SwiGLU FFN 10240) with 10 of its 30 blocks, 1024² (4096
  image + 256 caption tokens);
- dit: DiT-XL/2 at 256² (28 blocks, hidden 1152), batch 8 (2048 tokens), bf16: the shape where lynx must not lose.
Writes bench_e2e_<case>.json to $OUT; each lynx compile prints its share of linear FLOPs on the sparse path and
how many layers stayed dense for each reason.
Weights are random (built on the meta device, materialised on the GPU with N(0, 0.02)): speed does not depend on
them. FLUX compiles block by block (diffusers' `compile_repeated_blocks`), dense with `backend="inductor"`,
lynx with `backend="lynx", options={"execution": "sparse"}`; "graphs" adds `triton.cudagraphs`. (DiT has no
`_repeated_blocks` in diffusers: it compiles whole.) `lynx_mixed` compiles with `lynx_compile.compile_repeated_blocks`
and a policy that treats instances of each block class unalike (every layer sparse, but the odd-numbered instances
keep their largest linear dense: two decision patterns per class), as a calibrated policy does. Each forward is
timed with CUDA events, median of 10 after 3 warm-ups, twice round interleaved with the other variants (the lower
median counts); ratios are dense / lynx in the same graph mode. `lynx_dense` (lynx with execution="dense") can be
added to a case's variants to see what the backend costs by itself. `fp8` and `fp8_lynx` quantize the model with
torchao's float8 recipe first (`Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())`) and compile it with
Inductor / lynx; fp8_lynx's ratio is over fp8 where both run. `--profile` adds each variant's GPU time by kind of
kernel (attention, dense and sparse GEMMs, lynx's compressors, Inductor's kernels: `kernel_breakdown.py`) to the
printout and the JSON; without CUDA graphs, whose replays hide their kernels from the profiler. `--timeline` adds,
in either mode, where a forward's GPU clock goes between its kernels (`kernel_breakdown.kernel_timeline`: the span
from first kernel to last, the time kernels run, the idle between them by transition and gap size).
`dense` is timed with every list unless `--no-dense` (for models that fit the GPU only twice, FLUX's float8 variants
on an 80 GB card: then only ratios whose baseline is in the list, fp8_lynx over fp8).
"""

from __future__ import annotations

import gc
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
import lynx_compile  # noqa: E402
from kernel_breakdown import format_breakdowns, format_timelines, kernel_breakdown, kernel_timeline  # noqa: E402
from needs_gpu import require_cuda  # noqa: E402
from plots import plot_e2e  # noqa: E402


def materialise(model: torch.nn.Module) -> torch.nn.Module:
    """Random N(0, 0.02) weights on the GPU, bf16 (a model built on the meta device gets its storage here; one built
    on the GPU keeps its buffers, e.g. RoPE tables)."""
    if any(param.is_meta for param in model.parameters()):
        model = model.to_empty(device="cuda")
    generator = torch.Generator(device="cuda").manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.02, generator=generator)
    return model.to(torch.bfloat16).eval()


def flux_case(resolution: int = 1024, **config):
    """FLUX.1 (19 double + 38 single blocks unless `config` says otherwise) at `resolution`² with 512 text tokens."""
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        model = FluxTransformer2DModel(guidance_embeds=True, **config)
    model = materialise(model)
    g = torch.Generator(device="cuda").manual_seed(1)
    grid, text = resolution // 16, 512  # the VAE's 8× and the 2×2 packing
    ids = torch.zeros(grid, grid, 3, device="cuda")
    ids[..., 1] = torch.arange(grid, device="cuda")[:, None]
    ids[..., 2] = torch.arange(grid, device="cuda")[None, :]
    bf16 = dict(device="cuda", dtype=torch.bfloat16, generator=g)
    inputs = dict(
        hidden_states=torch.randn(1, grid * grid, 64, **bf16), encoder_hidden_states=torch.randn(1, text, 4096, **bf16),
        pooled_projections=torch.randn(1, 768, **bf16), timestep=torch.full((1,), 0.5, device="cuda"),
        img_ids=ids.reshape(-1, 3), txt_ids=torch.zeros(text, 3, device="cuda"),
        guidance=torch.full((1,), 3.5, device="cuda"), return_dict=False,
    )  # fmt: skip
    return model, inputs


def built_on_gpu(cls, **config) -> torch.nn.Module:
    """Built on the GPU in bf16, not on the meta device: RoPE tables computed at init would be left without data."""
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            return materialise(cls(**config))
    finally:
        torch.set_default_dtype(default_dtype)


def wan_case(frames: int = 33, num_layers: int = 8):
    """Wan2.1-14B's config with `num_layers` of its 40 blocks, 480×832 video of `frames` frames, 512 text tokens."""
    from diffusers import WanTransformer3DModel

    model = built_on_gpu(WanTransformer3DModel, num_layers=num_layers)  # Wan2.1-14B's defaults otherwise
    g = torch.Generator(device="cuda").manual_seed(1)
    bf16 = dict(device="cuda", dtype=torch.bfloat16, generator=g)
    latent_frames, height, width = (frames - 1) // 4 + 1, 480 // 8, 832 // 8  # the VAE's 4× time, 8× space
    inputs = dict(hidden_states=torch.randn(1, 16, latent_frames, height, width, **bf16),
                  timestep=torch.full((1,), 500, device="cuda"),
                  encoder_hidden_states=torch.randn(1, 512, 4096, **bf16), return_dict=False)  # fmt: skip
    return model, inputs


def qwen_image_case(num_layers: int = 20):
    from diffusers import QwenImageTransformer2DModel

    model = built_on_gpu(QwenImageTransformer2DModel, num_layers=num_layers)
    g = torch.Generator(device="cuda").manual_seed(1)
    bf16 = dict(device="cuda", dtype=torch.bfloat16, generator=g)
    inputs = dict(hidden_states=torch.randn(1, 4096, 64, **bf16),
                  encoder_hidden_states=torch.randn(1, 256, 3584, **bf16),
                  encoder_hidden_states_mask=torch.ones(1, 256, device="cuda", dtype=torch.long),
                  timestep=torch.full((1,), 0.5, device="cuda"), img_shapes=[(1, 64, 64)],
                  return_dict=False)  # fmt: skip
    return model, inputs


def z_image_case(num_layers: int = 10, latent_size: int = 1024 // 8, caption_tokens: int = 256, device: str = "cuda",
                 **config):
    """Z-Image's inputs are lists (one latent and one caption per sample): 16 × 1 × 128 × 128 latents at 1024²."""
    from diffusers import ZImageTransformer2DModel

    if device == "cuda":
        model = built_on_gpu(ZImageTransformer2DModel, n_layers=num_layers, **config)
    else:  # a tiny config, to check this case on a CPU
        model = ZImageTransformer2DModel(n_layers=num_layers, **config).eval()
    dtype = next(model.parameters()).dtype
    g = torch.Generator(device=device).manual_seed(1)
    latents = [torch.randn(model.config.in_channels, 1, latent_size, latent_size, device=device, dtype=dtype,
                           generator=g)]  # fmt: skip
    captions = [torch.randn(caption_tokens, model.config.cap_feat_dim, device=device, dtype=dtype, generator=g)]
    timestep = torch.full((1,), 0.5, device=device)
    with torch.no_grad():  # Z-Image builds its RoPE tables on the first call, outside what Dynamo can trace
        model(latents, timestep, captions)
    return model, dict(x=latents, t=timestep, cap_feats=captions, return_dict=False)


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


def compile_model(model: torch.nn.Module, regional: str = "diffusers", **compile_kwargs) -> torch.nn.Module:
    """Block by block where diffusers names the repeated blocks (FLUX): through diffusers, or through lynx (one graph
    per decision pattern, the linears outside the blocks too); else the whole model (DiT)."""
    if getattr(model, "_repeated_blocks", None):
        if regional == "lynx":
            compile_kwargs.pop("backend")
            return lynx_compile.compile_repeated_blocks(model, **compile_kwargs)
        model.compile_repeated_blocks(**compile_kwargs)
        return model
    return torch.compile(model, **compile_kwargs)


def mixed_policy(model: torch.nn.Module) -> lynx_compile.Policy:
    """Every linear sparse, except the largest linear of each odd-numbered instance of a repeated block: a policy
    that treats instances of one class unalike, as calibrated ones do (the speed rule still has the last word)."""
    modules = dict(model.named_modules())
    linears = [name for name, module in modules.items() if isinstance(module, torch.nn.Linear)]
    dense, blocks = set(), getattr(model, "_repeated_blocks", None) or ()
    for path, module in model.named_modules():
        index = path.rpartition(".")[2]
        if type(module).__name__ in blocks and index.isdigit() and int(index) % 2:
            dense.add(max((name for name in linears if name.startswith(path + ".")),
                          key=lambda name: (modules[name].weight.numel(), linears.index(name))))  # fmt: skip
    layers = {name: lynx_compile.LayerPolicy("dense" if name in dense else "sparse", "bench_e2e: mixed")
              for name in linears}  # fmt: skip
    return lynx_compile.Policy(layers, type(model).__name__)


def forward(model: torch.nn.Module, inputs: dict):
    # With CUDA graphs per block, each forward is one step: outputs of the last may be overwritten by the next.
    torch.compiler.cudagraph_mark_step_begin()
    return model(**inputs)


def time_forward_ms(fn, warmup: int = 3, runs: int = 10) -> tuple[float, float]:
    """(median time of a forward on the GPU's clock, median time until the call returned on the CPU's). A forward
    whose call returns only about when the GPU is done was host-bound (or its launch queue was full): its host
    work, not its kernels, set its time."""
    for _ in range(warmup):
        fn()
    times, returned = [], []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        started = time.perf_counter()
        start.record()
        fn()
        returned.append((time.perf_counter() - started) * 1e3)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), statistics.median(returned)


VARIANTS = {
    "dense": dict(backend="inductor"),
    "lynx": dict(backend="lynx", options={"execution": "sparse"}),
    # lynx restricted to one family of sparse paths (the speed rule picks among the allowed ones per layer)
    "lynx_cusparselt": dict(backend="lynx", options={"execution": "sparse",
                                                     "sparse_paths": ["cusparselt", "cusparselt_planned"]}),
    "lynx_cutlass": dict(backend="lynx", options={"execution": "sparse", "sparse_paths": "cutlass"}),
    # sibling groups as one GEMM over their packed weights (cuSPARSELt paths)
    "lynx_packed": dict(backend="lynx", options={"execution": "sparse", "pack_siblings": True}),
    # lynx with every layer dense: the backend's own cost, apart from the sparse layers' effect
    "lynx_dense": dict(backend="lynx", options={"execution": "dense"}),
    # lynx's regional compilation with a policy that differs between instances of a block class
    "lynx_mixed": dict(backend="lynx", options={"execution": "sparse", "policy": mixed_policy}, regional="lynx"),
    # torchao's float8 (dynamic activation, weight per row), compiled by Inductor / by lynx (measured against fp8)
    "fp8": dict(backend="inductor", quantize="float8"),
    "fp8_lynx": dict(backend="lynx", options={"execution": "sparse"}, quantize="float8", baseline="fp8"),
}


def quantize_float8(model: torch.nn.Module) -> torch.nn.Module:
    """torchao's float8 recipe as diffusers documents it: every linear, e4m3, rowwise scales."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    quantize_(model, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
    return model


def dense_reasons(report) -> dict[str, int]:
    """How many layers stayed dense for each reason, numbers (measured ratios, sizes) left out so that they group."""
    counts: dict[str, int] = {}
    for layer in report.layers:
        if layer.decision == "dense":
            reason = re.sub(r"[0-9.]+×|M=\d+|K=\d+|N=\d+|\d+\.\d+", "#", layer.reason)
            counts[reason] = counts.get(reason, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def dense_layer_kinds(report) -> dict[str, dict]:
    """The dense layers by kind (their names with block indices as `*`): how many report rows of each (one per block
    instance and per call), and the first one's reason with its numbers (the measured ratio), so that a log says which
    layers stayed dense, not only why."""
    kinds: dict[str, dict] = {}
    for layer in report.layers:
        if layer.decision == "dense":
            kind = re.sub(r"\.\d+(?=\.)", ".*", layer.name)
            entry = kinds.setdefault(kind, {"rows": 0, "tokens": layer.tokens, "reason": layer.reason})
            entry["rows"] += 1
    return kinds


def sparse_paths(report) -> dict[str, int]:
    """How many sparse layers each path runs (the speed rule's pick where several paths could)."""
    counts: dict[str, int] = {}
    for layer in report.layers:
        if layer.decision == "sparse":
            counts[layer.path] = counts.get(layer.path, 0) + 1
    return counts


def baseline(variant: str, timed: dict) -> str:
    """What a variant's speedup is over: its own baseline where that was timed too (fp8_lynx over fp8), else dense."""
    wanted = VARIANTS[variant].get("baseline", "dense")
    return wanted if wanted in timed else "dense"


def run_case(name: str, build, variants: tuple[str, ...], graph_modes=(False, True), profile: bool = False,
             timeline: bool = False) -> list[dict]:  # fmt: skip
    """Compile every variant first, then time them interleaved, twice round: no variant gets a quieter machine;
    with `profile`, then each variant's kernels by kind; with `timeline`, the idle between them."""
    rows = []
    for graphs in graph_modes:
        compiled, sparse_share, reasons, paths, dense_kinds = {}, {}, {}, {}, {}
        torch.compiler.reset()
        for variant in (bar := tqdm(variants, desc=f"bench_e2e {name} graphs={graphs}: compile", unit="variant")):
            bar.set_postfix_str(variant)
            model, inputs = build()
            kwargs = dict(VARIANTS[variant])
            kwargs.pop("baseline", None)
            if kwargs.pop("quantize", None) == "float8":
                model = quantize_float8(model)
            options = {**kwargs.pop("options", {}), **({"triton.cudagraphs": True} if graphs else {})}
            if callable(options.get("policy")):
                options["policy"] = options["policy"](model)
            model = compile_model(model, **kwargs, options=options or None)
            started = time.perf_counter()
            with torch.no_grad(), lynx_compile.collect_reports() as report:
                forward(model, inputs)
            tqdm.write(f"{name} graphs={graphs} {variant}: compiled in {time.perf_counter() - started:.0f} s; "
                       f"{report.summary() if report.layers else 'no lynx report'}")  # fmt: skip
            if "lynx" in variant:
                sparse_share[variant], reasons[variant] = report.sparse_flop_share, dense_reasons(report)
                paths[variant] = sparse_paths(report)
                tqdm.write(f"    sparse paths: {paths[variant]}")
                for reason, count in reasons[variant].items():
                    tqdm.write(f"    dense ×{count}: {reason}")
                dense_kinds[variant] = dense_layer_kinds(report)
                for kind, entry in dense_kinds[variant].items():
                    tqdm.write(f"    dense {kind} ({entry['rows']} rows, {entry['tokens']} tokens): "
                               f"{entry['reason']}")  # fmt: skip
            compiled[variant] = (model, inputs)
        times = {variant: [] for variant in variants}
        returned = {variant: [] for variant in variants}
        for _ in tqdm(range(2), desc=f"bench_e2e {name} graphs={graphs}: time", unit="round"):
            for variant, (model, inputs) in compiled.items():
                with torch.no_grad():
                    gpu_ms, return_ms = time_forward_ms(lambda: forward(model, inputs))
                times[variant].append(gpu_ms)
                returned[variant].append(return_ms)
        best = {variant: min(ms) for variant, ms in times.items()}
        ratios = [v for v in variants if v != "dense" and baseline(v, best) in best]
        print(f"{name} graphs={graphs}: " + ", ".join(f"{v} {ms}" for v, ms in times.items()) + "; the call "
              "returned after (ms, CPU): " + ", ".join(f"{v} {ms}" for v, ms in returned.items()), flush=True)
        rows.append({"model": name, "cuda_graphs": graphs, **{f"{v}_ms": t for v, t in best.items()},
                     **{f"{v}_returned_ms": min(ms) for v, ms in returned.items()},
                     **{f"speedup_{v}": best[baseline(v, best)] / best[v] for v in ratios},
                     "baselines": {v: baseline(v, best) for v in ratios},
                     "sparse_flop_share": sparse_share, "dense_reasons": reasons, "dense_layers": dense_kinds,
                     "sparse_paths": paths})  # fmt: skip
        if "lynx" in best and "dense" in best:
            rows[-1]["speedup"] = best["dense"] / best["lynx"]
        for wanted, key, measure, formatted in ((profile, "kernels", kernel_breakdown, format_breakdowns),
                                                (timeline, "timeline", kernel_timeline, format_timelines)):
            if wanted:  # each variant's kernels, one variant after another
                with torch.no_grad():
                    found = {variant: measure(lambda: forward(model, inputs))
                             for variant, (model, inputs) in compiled.items()}  # fmt: skip
                rows[-1][key] = found
                print(f"{name} graphs={graphs}:\n{formatted(found)}", flush=True)
        compiled.clear()
        model = inputs = None  # the last round's models must go before the next round builds two more
        torch.compiler.reset()  # Dynamo's caches hold the compiled modules too
        gc.collect()
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    require_cuda()
    profile, timeline, no_dense = "--profile" in sys.argv, "--timeline" in sys.argv, "--no-dense" in sys.argv
    args = [arg for arg in sys.argv[1:] if arg not in ("--profile", "--timeline", "--no-dense")]
    which = args[0] if args else "all"
    modes = {"graphs": (True,), "no-graphs": (False,)}.get(args[1] if len(args) > 1 else "", (False, True))
    variants = tuple(args[2].split(",")) if len(args) > 2 else ("dense", "lynx")
    if "dense" not in variants and not no_dense:
        variants = ("dense", *variants)  # every ratio falls back to dense
    cases = {"flux": flux_case, "wan": wan_case, "qwen_image": qwen_image_case, "z_image": z_image_case,
             "dit": dit_case}
    rows = []
    for name, build in cases.items():
        if which in (name, "all"):
            rows += run_case(name, build, variants, modes, profile, timeline)
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    out_dir = os.environ.get("OUT", "/tmp")
    with open(os.path.join(out_dir, f"bench_e2e_{which}.json"), "w") as f:
        json.dump({**meta, "rows": rows}, f, indent=1)
    if all("speedup" in row for row in rows):
        plot_e2e(rows, f"{meta['device']}, torch {meta['torch']}, bf16",
                 os.path.join(out_dir, f"bench_e2e_{which}.png"))  # fmt: skip
    print(f"\n{meta}\n{'model':10} {'graphs':>6} {'variant':>10} {'ms':>9} {'speedup':>8} {'over':>6} "
          f"{'sparse FLOPs':>12}")  # fmt: skip
    for r in rows:
        for v in variants:
            speedup = f"{r[f'speedup_{v}']:8.3f} {r['baselines'][v]:>6}" if f"speedup_{v}" in r else f"{'':15}"
            share = f"{100 * r['sparse_flop_share'][v]:11.1f}%" if v in r["sparse_flop_share"] else ""
            print(f"{r['model']:10} {str(r['cuda_graphs']):>6} {v:>10} {r[f'{v}_ms']:9.2f} {speedup} {share}")


if __name__ == "__main__":
    main()

"""One rank of tests/test_context_parallel.py, under torchrun: lynx on a diffusers FLUX with diffusers' own context
parallelism (`enable_parallelism(ContextParallelConfig(ulysses_degree=world))`, or `ring_degree=world` with `ring`).

    torchrun --nproc-per-node 2 tests/context_parallel_worker.py OUT_DIR {cpu|cuda} [graphs] [ring]

Each rank computes, from the same weights and inputs: the model alone (no parallelism) eager and compiled with lynx,
on the inputs and on slightly perturbed ones (how much more lynx's output moves than dense's); then, parallelism
enabled, eager, compiled whole with lynx (Dynamo's graph breaks counted against a compile with the "eager"
backend), explained, and compiled block by block (`compile_repeated_blocks`, against the model alone compiled the
same way). It writes OUT_DIR/rank<r>.json with the outputs' relative differences and every layer's decision and
token count.

On the CPU (gloo, fp32) the layers run simulated; on GPUs (NCCL, bf16) on sparse tensor cores, with every layer
the speed rule allows forced sparse (min_speedup near 0) so that the comparison covers them. Ring attention needs
the attention's log-sum-exp, which diffusers' native (SDPA) backend does not return: with `ring` the parallel model
attends through diffusers' "_native_flash" backend, so GPUs only.
"""

import copy
import gc
import json
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
if sys.argv[2:3] == ["cpu"]:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton is imported; on GPUs the kernels run compiled


def flux_for(device: str) -> tuple[torch.nn.Module, dict]:
    """The zoo's tiny FLUX on the CPU; on a GPU one large enough for real GEMMs (hidden 512, 1024 + 128 tokens)."""
    import zoo

    if device == "cpu":
        entry = zoo.ZOO["flux"]
        return entry.build(), entry.make_inputs(0)
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    model = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=2, num_single_layers=2,
                                   attention_head_dim=128, num_attention_heads=4, joint_attention_dim=512,
                                   pooled_projection_dim=256, guidance_embeds=True, axes_dims_rope=(16, 56, 56))  # fmt: skip
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, param[0].numel() ** -0.5 if param.ndim > 1 else 0.02)
    model = model.to("cuda", torch.bfloat16).eval()
    g = torch.Generator(device="cuda").manual_seed(1)
    grid, text = 32, 128
    ids = torch.zeros(grid, grid, 3, device="cuda")
    ids[..., 1] = torch.arange(grid, device="cuda")[:, None]
    ids[..., 2] = torch.arange(grid, device="cuda")[None, :]
    bf16 = dict(device="cuda", dtype=torch.bfloat16, generator=g)
    inputs = dict(
        hidden_states=torch.randn(1, grid * grid, 64, **bf16), encoder_hidden_states=torch.randn(1, text, 512, **bf16),
        pooled_projections=torch.randn(1, 256, **bf16), timestep=torch.full((1,), 0.5, device="cuda"),
        img_ids=ids.reshape(-1, 3), txt_ids=torch.zeros(text, 3, device="cuda"),
        guidance=torch.full((1,), 3.5, device="cuda"), return_dict=False,
    )  # fmt: skip
    return model, inputs


def perturbed(inputs: dict, scale: float = 4e-3) -> dict:
    """The inputs with the latents moved by `scale` of their spread (a fixed seed: the same on every rank)."""
    x = inputs["hidden_states"]
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float32).to(x.device, x.dtype)
    return {**inputs, "hidden_states": x + scale * x.float().std().to(x.dtype) * noise}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm()).item()


def graph_breaks() -> int:
    return sum(torch._dynamo.utils.counters["graph_break"].values())


def main(out_dir: str, device: str, graphs: bool, ring: bool) -> None:
    import lynx_compile
    from diffusers import ContextParallelConfig

    dist.init_process_group("nccl" if device == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if device == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    elif torch.accelerator.device_count() == 0:
        # diffusers places each rank on `rank % torch.accelerator.device_count()`: a CPU has no accelerator to count
        torch.accelerator.device_count = lambda: 1
    os.environ["LYNX_CACHE_DIR"] = os.path.join(out_dir, f"cache{rank}")  # only rank 0's measurements count
    options = {"execution": "simulate"} if device == "cpu" else {"execution": "sparse", "min_speedup": 1e-3}
    if graphs:
        options["triton.cudagraphs"] = True

    def call(fn, given: dict | None = None) -> torch.Tensor:  # noqa: ANN001
        torch.compiler.cudagraph_mark_step_begin()
        return fn(**(given or inputs))[0].clone()

    model, inputs = flux_for(device)
    alone = copy.deepcopy(model)
    result: dict = {"rank": rank, "world": world}
    with torch.no_grad():
        dense_alone = call(alone)
        lynx_compiled = torch.compile(alone, backend="lynx", options=options)
        lynx_alone = call(lynx_compiled)
        # The control: how far a small change of the input moves each output. 2:4 masks are discontinuous in x,
        # so lynx moves its output by this factor more than dense does, whatever the change's cause.
        moved = {"dense": rel(call(alone, perturbed(inputs)), dense_alone),
                 "lynx": rel(call(lynx_compiled, perturbed(inputs)), lynx_alone)}  # fmt: skip
        result["lynx_amplification"] = moved["lynx"] / moved["dense"]
        alone.compile_repeated_blocks(backend="lynx", options=options)  # the blocks only: the rest runs eagerly
        lynx_alone_regional = call(alone)
        if ring:
            model.set_attention_backend("_native_flash")
        degree = {"ring_degree" if ring else "ulysses_degree": world}
        model.enable_parallelism(config=ContextParallelConfig(**degree))
        dense_parallel = call(model)
        torch._dynamo.utils.counters.clear()
        call(torch.compile(model, backend="eager"))
        result["graph_breaks_eager_backend"] = graph_breaks()
        torch._dynamo.utils.counters.clear()
        with lynx_compile.collect_reports() as compiled_report:
            whole = torch.compile(model, backend="lynx", options=options)
            lynx_parallel = [call(whole) for _ in range(3)][-1]  # replays, where CUDA graphs are on
        result["graph_breaks_lynx"] = graph_breaks()
        report = lynx_compile.explain(model, **inputs, options=options)
        model.compile_repeated_blocks(backend="lynx", options=options)
        lynx_regional = [call(model) for _ in range(3)][-1]
    result.update(
        dense_parallel_vs_alone=rel(dense_parallel, dense_alone), lynx_parallel_vs_alone=rel(lynx_parallel, lynx_alone),
        lynx_regional_vs_alone=rel(lynx_regional, lynx_alone_regional), lynx_vs_dense=rel(lynx_alone, dense_alone),
        decisions={layer.name: layer.decision for layer in compiled_report.layers},
        explained={layer.name: [layer.decision, layer.tokens] for layer in report.layers},
        summary=report.summary(), table=str(report) if rank == 0 else "",
        image_rows_per_rank=inputs["hidden_states"].shape[0] * inputs["hidden_states"].shape[1] // world,
    )  # fmt: skip
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f, indent=1)
    # Graphs that captured a collective keep destroy_process_group waiting for ever (pytorch/pytorch#115388):
    # free them first
    del model, alone, lynx_compiled, whole
    torch.compiler.reset()
    gc.collect()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], "graphs" in sys.argv[3:], "ring" in sys.argv[3:])

"""Generate with a diffusers pipeline whose transformer is compiled by lynx (or by Inductor, or not at all).

    # a real checkpoint (a local folder or a hub id; the `examples` extra; a GPU to be fast: README)
    python examples/generate.py --pipeline flux --checkpoint black-forest-labs/FLUX.1-dev --mode reduce-overhead \
        --steps 28 --height 1024 --width 1024 --prompt "a lynx in the snow"
    # no checkpoint: tiny random components on CPU (the plumbing, not a picture)
    python examples/generate.py --pipeline flux --steps 4

`--pipeline` names one of PIPELINES (FLUX, Qwen-Image, Wan, Z-Image, PixArt-Sigma, SD3). With `--checkpoint` the
pipeline is loaded with `from_pretrained`; without, it is built from tiny random components (transformer, VAE and
scheduler of the real classes, no text encoder: random embeddings stand in for the prompt), which `--save-tiny DIR`
also writes with `save_pretrained`, so that `--checkpoint DIR` loads them back. The transformer is compiled with
`--backend` (`lynx`, with `--policy` a calibrated policy JSON and `--options` any other lynx option as JSON;
`inductor`: the dense baseline; `none`: eager). The pipeline shows its own progress bar; the script prints the time
of each step (the first includes compiling), the total, what lynx did, and saves the image (a video's frames side
by side) to `--out`. On 2 CPU cores the tiny FLUX ran in 54 s with lynx, 45 s of it Inductor compiling the
transformer, and in 8 s with `--backend none` (mostly starting Python and importing).

On CPU lynx simulates the method (prune, then a dense GEMM): its numerics, slower than dense. The speed is on sm_90
GPUs (H100, H200) in bf16 with CUDA graphs (`--mode reduce-overhead`).
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

import lynx_compile

TEXT_TOKENS = 16  # tiny pipelines: length of the random prompt embeddings


@dataclass(frozen=True)
class PipelineSpec:
    pipeline: str  # the diffusers pipeline class
    tiny: Callable[[], dict[str, Any]]  # tiny random components, text encoders left out
    prompt_inputs: Callable[[Any, int, torch.Generator], dict[str, Any]]  # random prompt embeddings for a pipe
    call: dict[str, Any]  # extra pipeline arguments
    video: bool = False


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """diffusers zero-initialises output projections and modulations: a tiny random model would output zeros."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            noise = torch.randn(param.shape, generator=generator)
            if param.ndim >= 2:
                param.copy_(noise / param[0].numel() ** 0.5)
            elif not torch.all(param == 1):
                param.copy_(0.02 * noise)
    return model.eval()


def _kl_vae(latent_channels: int, **config: Any):
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=latent_channels,
                         norm_num_groups=8, **config)  # fmt: skip


def _wan_vae(cls_name: str):
    import diffusers

    return getattr(diffusers, cls_name)(base_dim=16, z_dim=4, dim_mult=[1, 2], num_res_blocks=1,
                                        temperal_downsample=[False], latents_mean=[0.0] * 4,
                                        latents_std=[1.0] * 4)  # fmt: skip


def _flow_scheduler(**config: Any):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**config)


def _heads(prefix: str = "") -> dict[str, int]:
    return {f"{prefix}num_attention_heads": 4, f"{prefix}attention_head_dim": 16}


def _tiny_flux() -> dict[str, Any]:
    from diffusers import FluxTransformer2DModel

    transformer = FluxTransformer2DModel(**_heads(), patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
                                         axes_dims_rope=(4, 6, 6))  # fmt: skip
    scheduler = _flow_scheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    return dict(transformer=_randomize(transformer), vae=_kl_vae(4, shift_factor=0.0), scheduler=scheduler,
                text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None)  # fmt: skip


def _flux_prompt(pipe, batch: int, g: torch.Generator) -> dict[str, Any]:
    config = pipe.transformer.config
    return dict(prompt_embeds=torch.randn(batch, TEXT_TOKENS, config.joint_attention_dim, generator=g),
                pooled_prompt_embeds=torch.randn(batch, config.pooled_projection_dim, generator=g))  # fmt: skip


def _tiny_qwen_image() -> dict[str, Any]:
    from diffusers import QwenImageTransformer2DModel

    transformer = QwenImageTransformer2DModel(**_heads(), patch_size=2, in_channels=16, out_channels=4, num_layers=2,
                                              joint_attention_dim=32, axes_dims_rope=(4, 6, 6))  # fmt: skip
    scheduler = _flow_scheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9, time_shift_type="exponential")
    return dict(transformer=_randomize(transformer), vae=_wan_vae("AutoencoderKLQwenImage"), scheduler=scheduler,
                text_encoder=None, tokenizer=None)  # fmt: skip


def _masked_prompt(embeds: str, mask: str, negative: bool) -> Callable:
    def make(pipe, batch: int, g: torch.Generator) -> dict[str, Any]:
        config = pipe.transformer.config
        width = next(config[k] for k in ("joint_attention_dim", "caption_channels", "text_dim") if k in config)
        inputs = {}
        for prefix in ("", "negative_") if negative else ("",):
            inputs[prefix + embeds] = torch.randn(batch, TEXT_TOKENS, width, generator=g)
            if mask:
                inputs[prefix + mask] = torch.ones(batch, TEXT_TOKENS, dtype=torch.long)
        return inputs

    return make


def _tiny_wan() -> dict[str, Any]:
    from diffusers import UniPCMultistepScheduler, WanTransformer3DModel

    transformer = WanTransformer3DModel(**_heads(), patch_size=(1, 2, 2), in_channels=4, out_channels=4, text_dim=32,
                                        freq_dim=32, ffn_dim=256, num_layers=2)  # fmt: skip
    vae = _wan_vae("AutoencoderKLWan")
    vae.register_to_config(scale_factor_temporal=1, scale_factor_spatial=2)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    return dict(transformer=_randomize(transformer), vae=vae, scheduler=scheduler, text_encoder=None, tokenizer=None)


def _tiny_z_image() -> dict[str, Any]:
    from diffusers import ZImageTransformer2DModel

    transformer = ZImageTransformer2DModel(in_channels=4, dim=64, n_layers=2, n_refiner_layers=1, n_heads=4,
                                           n_kv_heads=4, cap_feat_dim=32, axes_dims=[4, 6, 6],
                                           axes_lens=[64, 32, 32])  # fmt: skip
    scheduler = _flow_scheduler(shift=3.0)
    return dict(transformer=_randomize(transformer), vae=_kl_vae(4, shift_factor=0.0), scheduler=scheduler,
                text_encoder=None, tokenizer=None)  # fmt: skip


def _z_image_prompt(pipe, batch: int, g: torch.Generator) -> dict[str, Any]:
    width = pipe.transformer.config.cap_feat_dim  # a list: one (tokens, width) tensor a prompt
    return {key: [torch.randn(TEXT_TOKENS, width, generator=g) for _ in range(batch)]
            for key in ("prompt_embeds", "negative_prompt_embeds")}  # fmt: skip


def _tiny_pixart() -> dict[str, Any]:
    from diffusers import DPMSolverMultistepScheduler, PixArtTransformer2DModel

    transformer = PixArtTransformer2DModel(**_heads(), in_channels=4, out_channels=8, num_layers=2, sample_size=32,
                                           patch_size=2, cross_attention_dim=64, caption_channels=32,
                                           use_additional_conditions=False)  # fmt: skip
    return dict(transformer=_randomize(transformer), vae=_kl_vae(4), scheduler=DPMSolverMultistepScheduler(),
                text_encoder=None, tokenizer=None)  # fmt: skip


def _tiny_sd3() -> dict[str, Any]:
    from diffusers import SD3Transformer2DModel

    transformer = SD3Transformer2DModel(**_heads(), in_channels=4, out_channels=4, num_layers=2, sample_size=32,
                                        patch_size=2, joint_attention_dim=32, caption_projection_dim=64,
                                        pooled_projection_dim=32, pos_embed_max_size=64)  # fmt: skip
    components = dict(transformer=_randomize(transformer), vae=_kl_vae(4, shift_factor=0.0),
                      scheduler=_flow_scheduler(shift=3.0))  # fmt: skip
    return components | {f"{part}{i}": None for part in ("text_encoder", "tokenizer") for i in ("", "_2", "_3")}


def _sd3_prompt(pipe, batch: int, g: torch.Generator) -> dict[str, Any]:
    config = pipe.transformer.config
    inputs = {}
    for prefix in ("", "negative_"):
        inputs[prefix + "prompt_embeds"] = torch.randn(batch, TEXT_TOKENS, config.joint_attention_dim, generator=g)
        inputs[prefix + "pooled_prompt_embeds"] = torch.randn(batch, config.pooled_projection_dim, generator=g)
    return inputs


PIPELINES: dict[str, PipelineSpec] = {
    "flux": PipelineSpec("FluxPipeline", _tiny_flux, _flux_prompt, {}),
    "qwen-image": PipelineSpec("QwenImagePipeline", _tiny_qwen_image,
                               _masked_prompt("prompt_embeds", "prompt_embeds_mask", negative=False),
                               {"true_cfg_scale": 1.0}),
    "wan": PipelineSpec("WanPipeline", _tiny_wan, _masked_prompt("prompt_embeds", "", negative=True), {}, video=True),
    "z-image": PipelineSpec("ZImagePipeline", _tiny_z_image, _z_image_prompt, {}),
    "pixart": PipelineSpec("PixArtSigmaPipeline", _tiny_pixart,
                           _masked_prompt("prompt_embeds", "prompt_attention_mask", negative=True),
                           {"use_resolution_binning": False, "negative_prompt": None}),
    "sd3": PipelineSpec("StableDiffusion3Pipeline", _tiny_sd3, _sd3_prompt, {}),
}  # fmt: skip


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:2] if part.isdigit())


def load_pipeline(spec: PipelineSpec, checkpoint: str | None, dtype: torch.dtype, device: str):
    import diffusers

    cls = getattr(diffusers, spec.pipeline)
    if checkpoint is not None:
        # Components saved as null (a tiny pipeline's text encoders) must be passed as None explicitly.
        absent = {name: None for name, value in cls.load_config(checkpoint).items()
                  if isinstance(value, list) and value[0] is None}  # fmt: skip
        dtype_key = "dtype" if _version(diffusers.__version__) >= (0, 42) else "torch_dtype"  # renamed in 0.42
        pipe = cls.from_pretrained(checkpoint, **{dtype_key: dtype}, **absent)
    else:
        torch.manual_seed(0)  # the VAE keeps diffusers' random init
        pipe = cls(**spec.tiny())
        if dtype != torch.float32:  # built in fp32; from_pretrained casts a checkpoint itself
            pipe.to(dtype=dtype)
    return pipe.to(device)


def compile_transformer(pipe, backend: str, mode: str | None, policy: str | None, options: dict[str, Any]) -> None:
    if backend == "none":
        return
    if backend == "inductor":
        pipe.transformer = torch.compile(pipe.transformer, mode=mode)
        return
    options = dict(options)
    if mode:
        options["mode"] = mode  # torch.compile refuses mode= beside options=; lynx takes it among its options
    if policy:
        options["policy"] = policy
    pipe.transformer = torch.compile(pipe.transformer, backend="lynx", options=options or None)


def prompt_arguments(pipe, spec: PipelineSpec, prompt: str, seed: int) -> dict[str, Any]:
    """The prompt, or random embeddings where the pipeline has no text encoder (tiny random components)."""
    if getattr(pipe, "text_encoder", None) is not None:
        return {"prompt": prompt}
    print("this pipeline has no text encoder (tiny random components): random embeddings stand in for the prompt")
    embeddings = spec.prompt_inputs(pipe, 1, torch.Generator().manual_seed(seed))
    device, dtype = pipe.transformer.device, pipe.transformer.dtype
    return {key: [t.to(device, dtype) for t in value] if isinstance(value, list)
            else value.to(device) if value.dtype == torch.long else value.to(device, dtype)
            for key, value in embeddings.items()}  # fmt: skip


def save(output: Any, spec: PipelineSpec, path: Path) -> None:
    """An image as it is; a video's frames side by side."""
    if spec.video:
        frames = [np.asarray(frame) for frame in output.frames[0]]
        frames = [(f * 255).round().astype(np.uint8) if f.dtype != np.uint8 else f for f in frames]
        image = Image.fromarray(np.concatenate(frames, axis=1))
    else:
        image = output.images[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", choices=sorted(PIPELINES), default="flux")
    parser.add_argument("--checkpoint", help="a local folder or hub id for from_pretrained; none: tiny random")
    parser.add_argument("--backend", choices=("lynx", "inductor", "none"), default="lynx")
    parser.add_argument("--policy", help="lynx: a policy JSON from lynx_compile.calibrate (layers it names go sparse)")
    parser.add_argument("--options", type=json.loads, default={},
                        help='lynx: any other option as JSON, e.g. \'{"exclude": ["*.proj_out"]}\'')
    parser.add_argument("--mode", help='torch.compile mode, e.g. "reduce-overhead" (CUDA graphs: needed for speed)')
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--height", type=int, help="default: the pipeline's own (tiny random: 64)")
    parser.add_argument("--width", type=int)
    parser.add_argument("--frames", type=int, default=5, help="video pipelines (Wan)")
    parser.add_argument("--prompt", default="a lynx in the snow, photograph")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"),
                        help="default: bfloat16 on CUDA (the sparse path needs 16-bit), float32 on CPU")
    parser.add_argument("--out", type=Path, default=Path("generated.png"))
    parser.add_argument("--save-tiny", type=Path, help="write the tiny random pipeline here (save_pretrained)")
    args = parser.parse_args(argv)

    spec = PIPELINES[args.pipeline]
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    pipe = load_pipeline(spec, args.checkpoint, dtype, args.device)
    if args.save_tiny is not None:
        pipe.save_pretrained(args.save_tiny)
        print(f"saved the pipeline to {args.save_tiny}; load it back with --checkpoint {args.save_tiny}")
    compile_transformer(pipe, args.backend, args.mode, args.policy, args.options)

    size = {} if args.checkpoint else {"height": 64, "width": 64}  # tiny: the VAE's downscale is 2, not 8
    size |= {key: value for key, value in (("height", args.height), ("width", args.width)) if value}
    call = dict(spec.call, num_inference_steps=args.steps, generator=torch.Generator().manual_seed(args.seed),
                **size, **prompt_arguments(pipe, spec, args.prompt, args.seed))  # fmt: skip
    if spec.video:
        call["num_frames"] = args.frames

    step_ends: list[float] = []
    device = torch.device(args.device)

    def on_step_end(*callback_args: Any) -> Any:
        if device.type == "cuda":  # the step's kernels finish before its time is taken
            torch.cuda.synchronize(device)
        step_ends.append(time.perf_counter())
        return callback_args[-1]  # callback_on_step_end hands back its kwargs; the legacy callback returns nothing

    with lynx_compile.collect_reports() as report:
        start = time.perf_counter()
        output = run(pipe, call, on_step_end)
        total = time.perf_counter() - start
    steps = np.diff([start, *step_ends]).tolist()
    save(output, spec, args.out)

    print(f"\n{spec.pipeline} ({'checkpoint ' + args.checkpoint if args.checkpoint else 'tiny random components'}), "
          f"{args.backend}, {dtype}, {args.device}")  # fmt: skip
    print(f"step 1{' (compiles the transformer on first use)' if args.backend != 'none' else ''}: {steps[0]:.2f} s")
    if len(steps) > 1:
        print(f"steps 2–{len(steps)}: median {statistics.median(steps[1:]):.3f} s a step "
              f"({', '.join(f'{s:.3f}' for s in steps[1:])})")  # fmt: skip
    print(f"total {total:.2f} s (the whole pipeline call: prompt, steps, VAE decoding)")
    if args.backend == "lynx" and report.layers:
        print(f"lynx: {report.summary()}")
    print(f"saved {args.out}")
    return {"steps": steps, "total": total, "report": report, "out": args.out}


def run(pipe, call: dict[str, Any], on_step_end: Callable) -> Any:
    """The pipeline call, with `on_step_end` after each step: `callback_on_step_end` where the pipeline has it,
    the legacy `callback` (PixArt) where not."""
    parameters = inspect.signature(pipe.__call__).parameters
    if "callback_on_step_end" in parameters:
        call = dict(call, callback_on_step_end=on_step_end)
    else:
        call = dict(call, callback=on_step_end, callback_steps=1)
    with torch.no_grad():
        return pipe(**call)


if __name__ == "__main__":
    main()

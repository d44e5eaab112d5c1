"""Tiny model zoo of diffusers Diffusion Transformers for the CPU backend tests.

Each entry builds a real diffusers class with a toy config (2 transformer blocks, FLUX 1 double
+ 1 single; hidden 64 = 4 heads x 16; 16+ image tokens), so torch.compile takes well under 30 s
on a 2-core CPU while the graph keeps the structure of the full-size model. Every linear inside
the blocks has in_features a multiple of 8 and >= 16, so the backend treats it as a real GEMM.

Parameters are re-initialised with seeded random values after construction: diffusers
zero-initialises some output projections and adaLN modulations, which would hide those
linears from output comparisons.
"""

from dataclasses import dataclass
from typing import Callable

import torch
from diffusers import (
    DiTTransformer2DModel,
    FluxTransformer2DModel,
    PixArtTransformer2DModel,
    QwenImageTransformer2DModel,
    SD3Transformer2DModel,
    WanTransformer3DModel,
)

HEADS = 4
HEAD_DIM = 16
HIDDEN = HEADS * HEAD_DIM  # 64
ROPE_AXES = (4, 6, 6)  # sums to HEAD_DIM (FLUX / Qwen-Image 3-axis RoPE)
BATCH = 2
LATENT_CHANNELS = 4
LATENT_SIZE = 8  # 8x8 latent, patch 2 -> 4x4 = 16 image tokens
TEXT_TOKENS = 16
TEXT_DIM = 32
MODEL_SEED = 1234


@dataclass(frozen=True)
class ZooModel:
    name: str
    build: Callable[[], torch.nn.Module]
    make_inputs: Callable[[int], dict]
    block_prefixes: tuple[str, ...]


def output_tensor(out) -> torch.Tensor:
    """The sample tensor of a diffusers transformer called with return_dict=False."""
    return out[0]


def to_cuda_bf16(value):
    """A model's inputs as its user passes them on the GPU: floating tensors in bf16, other tensors moved, the rest
    (and the structure of lists, tuples and dicts) as they are."""
    if isinstance(value, torch.Tensor):
        return value.cuda().to(torch.bfloat16) if value.is_floating_point() else value.cuda()
    if isinstance(value, (list, tuple)):
        return type(value)(to_cuda_bf16(item) for item in value)
    if isinstance(value, dict):
        return {key: to_cuda_bf16(item) for key, item in value.items()}
    return value


def _randomize_parameters(model: torch.nn.Module, seed: int) -> None:
    """Seeded re-init: weights ~ N(0, 1/fan_in) (gain ~1 per layer), biases ~ N(0, 0.02^2),
    norm scales (initialised to ones) ~ 1 + N(0, 0.1^2)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            noise = torch.randn(param.shape, generator=generator, dtype=param.dtype)
            if param.ndim >= 2:
                fan_in = param[0].numel()
                param.copy_(noise / fan_in**0.5)
            elif torch.all(param == 1):
                param.copy_(1 + 0.1 * noise)
            else:
                param.copy_(0.02 * noise)


def _builder(model_cls, **config) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        torch.manual_seed(MODEL_SEED)
        model = model_cls(**config)
        _randomize_parameters(model, MODEL_SEED)
        return model.eval()  # already fp32 on CPU; .to(dtype=...) would only log a diffusers warning

    return build


def _text_mask(batch: int) -> torch.Tensor:
    """All text tokens valid for sample 0, last quarter padded for the others."""
    mask = torch.ones(batch, TEXT_TOKENS, dtype=torch.long)
    mask[1:, TEXT_TOKENS * 3 // 4 :] = 0
    return mask


# --- FLUX.1-dev style: packed 2x2 latents, 3-axis RoPE ids, guidance embedding -------------
def _flux_inputs(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    grid = LATENT_SIZE // 2
    img_ids = torch.zeros(grid, grid, 3)
    img_ids[..., 1] = torch.arange(grid)[:, None]
    img_ids[..., 2] = torch.arange(grid)[None, :]
    return dict(
        hidden_states=torch.randn(BATCH, grid * grid, LATENT_CHANNELS * 4, generator=g),
        encoder_hidden_states=torch.randn(BATCH, TEXT_TOKENS, TEXT_DIM, generator=g),
        pooled_projections=torch.randn(BATCH, TEXT_DIM, generator=g),
        timestep=torch.rand(BATCH, generator=g),  # sigma in [0, 1]; the model scales by 1000
        img_ids=img_ids.reshape(grid * grid, 3),
        txt_ids=torch.zeros(TEXT_TOKENS, 3),
        guidance=torch.full((BATCH,), 3.5),
        return_dict=False,
    )


# --- Qwen-Image: packed 2x2 latents, text mask, img_shapes for RoPE ---------------------------
def _qwen_image_inputs(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    grid = LATENT_SIZE // 2
    return dict(
        hidden_states=torch.randn(BATCH, grid * grid, LATENT_CHANNELS * 4, generator=g),
        encoder_hidden_states=torch.randn(BATCH, TEXT_TOKENS, TEXT_DIM, generator=g),
        encoder_hidden_states_mask=_text_mask(BATCH),
        timestep=torch.rand(BATCH, generator=g),  # sigma in [0, 1]; the model scales by 1000
        img_shapes=[(1, grid, grid)] * BATCH,
        return_dict=False,
    )


# --- SD3 / SD3.5: NCHW latents, pooled text, float timesteps in [0, 1000) ---------------------
def _sd3_inputs(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(BATCH, LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE, generator=g),
        encoder_hidden_states=torch.randn(BATCH, TEXT_TOKENS, TEXT_DIM, generator=g),
        pooled_projections=torch.randn(BATCH, TEXT_DIM, generator=g),
        timestep=1000 * torch.rand(BATCH, generator=g),
        return_dict=False,
    )


# --- PixArt-Sigma: caption cross-attention with padding mask, no resolution conditions ----------
def _pixart_inputs(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(BATCH, LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE, generator=g),
        encoder_hidden_states=torch.randn(BATCH, TEXT_TOKENS, TEXT_DIM, generator=g),
        encoder_attention_mask=_text_mask(BATCH),
        timestep=torch.randint(0, 1000, (BATCH,), generator=g),
        added_cond_kwargs={"resolution": None, "aspect_ratio": None},
        return_dict=False,
    )


# --- DiT (class-conditional ImageNet): long timesteps and class labels --------------------------
DIT_NUM_CLASSES = 16


def _dit_inputs(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(BATCH, LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE, generator=g),
        timestep=torch.randint(0, 1000, (BATCH,), generator=g),
        class_labels=torch.randint(0, DIT_NUM_CLASSES, (BATCH,), generator=g),
        return_dict=False,
    )


# --- Wan 2.1 T2V: 5-D video latents (B, C, F, H, W), 2 frames -> 2 x 4 x 4 = 32 tokens ------------
WAN_FRAMES = 2


def _wan_inputs(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(BATCH, LATENT_CHANNELS, WAN_FRAMES, LATENT_SIZE, LATENT_SIZE, generator=g),
        timestep=1000 * torch.rand(BATCH, generator=g),
        encoder_hidden_states=torch.randn(BATCH, TEXT_TOKENS, TEXT_DIM, generator=g),
        return_dict=False,
    )


_HEADS = dict(num_attention_heads=HEADS, attention_head_dim=HEAD_DIM)
_FLUX = dict(**_HEADS, patch_size=1, in_channels=LATENT_CHANNELS * 4, num_layers=1, num_single_layers=1,
             joint_attention_dim=TEXT_DIM, pooled_projection_dim=TEXT_DIM, guidance_embeds=True,
             axes_dims_rope=ROPE_AXES)


def build_flux(num_single_layers: int) -> torch.nn.Module:
    """The zoo's FLUX with more single blocks: several instances of one block class (regional compilation)."""
    return _builder(FluxTransformer2DModel, **{**_FLUX, "num_single_layers": num_single_layers})()
_PATCHED_2D = dict(**_HEADS, in_channels=LATENT_CHANNELS, num_layers=2, sample_size=LATENT_SIZE, patch_size=2)

ZOO: dict[str, ZooModel] = {
    model.name: model
    for model in (
        ZooModel(
            name="flux",
            # 2 double + 2 single blocks compile in ~30 s on 2 CPU cores; 1 + 1 in ~19 s.
            build=_builder(FluxTransformer2DModel, **_FLUX),
            make_inputs=_flux_inputs,
            block_prefixes=("transformer_blocks.", "single_transformer_blocks."),
        ),
        ZooModel(
            name="qwen_image",
            build=_builder(
                QwenImageTransformer2DModel, **_HEADS, patch_size=2, in_channels=LATENT_CHANNELS * 4,
                out_channels=LATENT_CHANNELS, num_layers=2, joint_attention_dim=TEXT_DIM,
                axes_dims_rope=ROPE_AXES,
            ),
            make_inputs=_qwen_image_inputs,
            block_prefixes=("transformer_blocks.",),
        ),
        ZooModel(
            name="sd3",
            build=_builder(
                SD3Transformer2DModel, **_PATCHED_2D, out_channels=LATENT_CHANNELS,
                joint_attention_dim=TEXT_DIM, caption_projection_dim=HIDDEN,
                pooled_projection_dim=TEXT_DIM, pos_embed_max_size=LATENT_SIZE,
                qk_norm="rms_norm",  # SD3.5 style
            ),
            make_inputs=_sd3_inputs,
            block_prefixes=("transformer_blocks.",),
        ),
        ZooModel(
            name="pixart",
            build=_builder(
                PixArtTransformer2DModel, **_PATCHED_2D, out_channels=LATENT_CHANNELS * 2,  # learned sigma
                cross_attention_dim=HIDDEN, caption_channels=TEXT_DIM, use_additional_conditions=False,
            ),
            make_inputs=_pixart_inputs,
            block_prefixes=("transformer_blocks.",),
        ),
        ZooModel(
            name="dit",
            build=_builder(
                DiTTransformer2DModel, **_PATCHED_2D, out_channels=LATENT_CHANNELS * 2,  # learned sigma
                num_embeds_ada_norm=DIT_NUM_CLASSES,
            ),
            make_inputs=_dit_inputs,
            block_prefixes=("transformer_blocks.",),
        ),
        ZooModel(
            name="wan",
            build=_builder(
                WanTransformer3DModel, **_HEADS, patch_size=(1, 2, 2), in_channels=LATENT_CHANNELS,
                out_channels=LATENT_CHANNELS, text_dim=TEXT_DIM, freq_dim=32, ffn_dim=4 * HIDDEN,
                num_layers=2,
            ),
            make_inputs=_wan_inputs,
            block_prefixes=("blocks.",),
        ),
    )
}

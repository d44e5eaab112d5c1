"""Tiny configs of diffusers' image transformers beyond tests/zoo.py, for the family sweep (tests/test_family.py).

Hidden 64 = 4 heads × 16 (Z-Image 96 = 6 × 16, so its FFN width is a multiple of 8), 16 text tokens of width 32,
batch 2, 8×8 latents: 16 image tokens after 2×2 patches. Weights re-initialised as the zoo's (`_randomize_parameters`).
Inputs are what each pipeline passes (AuraFlow: t/1000, which the model scales by 1000).
"""

import diffusers
import torch
from zoo import _builder, _text_mask

HEADS, HEAD_DIM, HIDDEN = 4, 16, 64
BATCH, C, S, T, TD = 2, 4, 8, 16, 32  # latent channels, latent size, text tokens, text dim


def g(seed):
    return torch.Generator().manual_seed(seed)


def flux_ids(grid=4, dims=3):
    ids = torch.zeros(grid, grid, dims)
    ids[..., 1] = torch.arange(grid)[:, None]
    ids[..., 2] = torch.arange(grid)[None, :]
    return ids.reshape(grid * grid, dims)


def packed(gen):  # packed 2x2 latents: (B, 16 tokens, 16 ch)
    return torch.randn(BATCH, 16, C * 4, generator=gen)


def sana_inputs(seed):
    gen = g(seed)
    return dict(hidden_states=torch.randn(BATCH, C, S, S, generator=gen),
                encoder_hidden_states=torch.randn(BATCH, T, TD, generator=gen),
                timestep=torch.randint(0, 1000, (BATCH,), generator=gen),
                encoder_attention_mask=_text_mask(BATCH), return_dict=False)


def lumina2_inputs(seed):
    gen = g(seed)
    return dict(hidden_states=torch.randn(BATCH, C, S, S, generator=gen),
                timestep=torch.rand(BATCH, generator=gen),
                encoder_hidden_states=torch.randn(BATCH, T, TD, generator=gen),
                encoder_attention_mask=_text_mask(BATCH).bool(), return_dict=False)


def lumina_next_inputs(seed):
    from diffusers.models.embeddings import get_2d_rotary_pos_embed_lumina
    gen = g(seed)
    return dict(hidden_states=torch.randn(BATCH, C, S, S, generator=gen),
                timestep=torch.rand(BATCH, generator=gen),
                encoder_hidden_states=torch.randn(BATCH, T, TD, generator=gen),
                encoder_mask=_text_mask(BATCH),
                image_rotary_emb=get_2d_rotary_pos_embed_lumina(HEAD_DIM, 384, 384),
                cross_attention_kwargs={}, return_dict=False)


def auraflow_inputs(seed):
    gen = g(seed)  # t/1000 in [0, 1], as the pipeline passes it (the model scales by 1000)
    return dict(hidden_states=torch.randn(BATCH, C, S, S, generator=gen),
                encoder_hidden_states=torch.randn(BATCH, T, TD, generator=gen),
                timestep=torch.rand(BATCH, generator=gen), return_dict=False)


def flux2_inputs(seed):
    gen = g(seed)
    img_ids = torch.cartesian_prod(torch.arange(1), torch.arange(4), torch.arange(4), torch.arange(1))
    txt_ids = torch.cartesian_prod(torch.arange(1), torch.arange(1), torch.arange(1), torch.arange(T))
    return dict(hidden_states=packed(gen), encoder_hidden_states=torch.randn(BATCH, T, TD, generator=gen),
                timestep=torch.rand(BATCH, generator=gen),
                img_ids=img_ids.unsqueeze(0).expand(BATCH, -1, -1), txt_ids=txt_ids.unsqueeze(0).expand(BATCH, -1, -1),
                guidance=torch.full((BATCH,), 3.5), return_dict=False)


def hidream_inputs(seed):
    gen = g(seed)
    return dict(hidden_states=torch.randn(BATCH, C, S, S, generator=gen),
                timesteps=torch.randint(0, 1000, (BATCH,), generator=gen),
                encoder_hidden_states_t5=torch.randn(BATCH, T, TD, generator=gen),
                encoder_hidden_states_llama3=torch.randn(2, BATCH, T, 16, generator=gen),
                pooled_embeds=torch.randn(BATCH, TD, generator=gen), return_dict=False)


def cogview_inputs(seed):
    gen = g(seed)
    return dict(hidden_states=torch.randn(BATCH, C, S, S, generator=gen),
                encoder_hidden_states=torch.randn(BATCH, T, TD, generator=gen),
                timestep=torch.randint(0, 1000, (BATCH,), generator=gen),
                original_size=torch.tensor([[64, 64]] * BATCH), target_size=torch.tensor([[64, 64]] * BATCH),
                crop_coords=torch.tensor([[0, 0]] * BATCH), return_dict=False)


def hunyuandit_inputs(seed):
    from diffusers.models.embeddings import get_2d_rotary_pos_embed
    gen = g(seed)
    meta = torch.tensor([[1024, 1024, 64, 64, 0, 0]] * BATCH, dtype=torch.float32)
    return dict(hidden_states=torch.randn(BATCH, C, S, S, generator=gen),
                timestep=torch.randint(0, 1000, (BATCH,), generator=gen).float(),
                encoder_hidden_states=torch.randn(BATCH, T, TD, generator=gen),
                text_embedding_mask=_text_mask(BATCH),
                encoder_hidden_states_t5=torch.randn(BATCH, T, TD, generator=gen),
                text_embedding_mask_t5=_text_mask(BATCH),
                image_meta_size=meta, style=torch.zeros(BATCH, dtype=torch.long),
                image_rotary_emb=get_2d_rotary_pos_embed(HEAD_DIM, ((0, 0), (4, 4)), (4, 4), output_type="pt"),
                return_dict=False)


def hunyuanimage_inputs(seed):
    gen = g(seed)
    return dict(hidden_states=torch.randn(BATCH, C, S, S, generator=gen),
                timestep=torch.randint(0, 1000, (BATCH,), generator=gen).float(),
                encoder_hidden_states=torch.randn(BATCH, T, TD, generator=gen),
                encoder_attention_mask=_text_mask(BATCH), return_dict=False)


def omnigen_inputs(seed):
    gen = g(seed)
    seq = 24
    attn = seq + 1 + S * S // 4
    return dict(hidden_states=torch.randn(BATCH, C, S, S, generator=gen),
                timestep=torch.rand(BATCH, generator=gen),
                input_ids=torch.randint(0, 10, (BATCH, seq), generator=gen),
                input_img_latents=[torch.randn(1, C, S, S, generator=gen)],
                input_image_sizes={0: [[0, S * S // 4]]},
                attention_mask=torch.ones(BATCH, attn, attn),
                position_ids=torch.arange(attn).repeat(BATCH, 1), return_dict=False)


def prx_inputs(seed):
    gen = g(seed)
    return dict(hidden_states=torch.randn(BATCH, C, S, S, generator=gen),
                timestep=torch.rand(BATCH, generator=gen),
                encoder_hidden_states=torch.randn(BATCH, T, TD, generator=gen),
                attention_mask=_text_mask(BATCH).bool(), return_dict=False)


def flux_like_inputs(seed):
    """FLUX.1's inputs without guidance: Chroma, Bria, LongCat, Ovis."""
    gen = g(seed)
    return dict(hidden_states=packed(gen), encoder_hidden_states=torch.randn(BATCH, T, TD, generator=gen),
                timestep=torch.rand(BATCH, generator=gen), img_ids=flux_ids(), txt_ids=torch.zeros(T, 3),
                return_dict=False)


def zimage_inputs(seed):
    gen = g(seed)
    return dict(x=[torch.randn(C, 1, S, S, generator=gen) for _ in range(BATCH)],
                t=torch.rand(BATCH, generator=gen),
                cap_feats=[torch.randn(T, TD, generator=gen) for _ in range(BATCH)], return_dict=False)


def qwen21_inputs(seed):
    gen = g(seed)
    img_mask = torch.zeros(BATCH, T + 16 // 4, dtype=torch.bool)
    img_mask[:, T:] = True
    return dict(hidden_states=packed(gen), encoder_hidden_states=torch.randn(BATCH, T, TD, generator=gen),
                encoder_hidden_states_mask=_text_mask(BATCH), timestep=torch.rand(BATCH, generator=gen),
                img_shapes=[[(1, 4, 4)]] * BATCH, img_mask=img_mask, return_dict=False)


H = dict(num_attention_heads=HEADS, attention_head_dim=HEAD_DIM)
CONFIGS = {
    "Sana": ("SanaTransformer2DModel", dict(
        in_channels=C, out_channels=C, **H, num_layers=2, num_cross_attention_heads=HEADS,
        cross_attention_head_dim=HEAD_DIM, cross_attention_dim=HIDDEN, caption_channels=TD, mlp_ratio=2.5,
        sample_size=S, patch_size=2), sana_inputs),
    "Lumina2": ("Lumina2Transformer2DModel", dict(
        sample_size=S, patch_size=2, in_channels=C, hidden_size=HIDDEN, num_layers=2, num_refiner_layers=1,
        num_attention_heads=HEADS, num_kv_heads=2, multiple_of=16, axes_dim_rope=(4, 6, 6),
        axes_lens=(128, 128, 128), cap_feat_dim=TD), lumina2_inputs),
    "LuminaNext": ("LuminaNextDiT2DModel", dict(
        sample_size=S, patch_size=2, in_channels=C, hidden_size=HIDDEN, num_layers=2, num_attention_heads=HEADS,
        num_kv_heads=2, multiple_of=16, learn_sigma=False, qk_norm=True, cross_attention_dim=TD),
        lumina_next_inputs),
    "AuraFlow": ("AuraFlowTransformer2DModel", dict(
        sample_size=S, patch_size=2, in_channels=C, num_mmdit_layers=1, num_single_dit_layers=1, **H,
        joint_attention_dim=TD, caption_projection_dim=HIDDEN, out_channels=C, pos_embed_max_size=16),
        auraflow_inputs),
    "Chroma": ("ChromaTransformer2DModel", dict(
        patch_size=1, in_channels=C * 4, num_layers=1, num_single_layers=1, **H, joint_attention_dim=TD,
        axes_dims_rope=(4, 6, 6), approximator_num_channels=16, approximator_hidden_dim=32,
        approximator_layers=1), flux_like_inputs),
    "Flux2": ("Flux2Transformer2DModel", dict(
        patch_size=1, in_channels=C * 4, num_layers=1, num_single_layers=1, **H, joint_attention_dim=TD,
        timestep_guidance_channels=256, axes_dims_rope=(4, 4, 4, 4)), flux2_inputs),
    "HiDream": ("HiDreamImageTransformer2DModel", dict(
        patch_size=2, in_channels=C, out_channels=C, num_layers=1, num_single_layers=1, **H,
        caption_channels=[TD, 16], text_emb_dim=TD, num_routed_experts=2, num_activated_experts=2,
        axes_dims_rope=(8, 4, 4), max_resolution=(16, 16), llama_layers=(0, 1)), hidream_inputs),
    "CogView4": ("CogView4Transformer2DModel", dict(
        patch_size=2, in_channels=C, num_layers=2, **H, out_channels=C, text_embed_dim=TD, time_embed_dim=TD,
        condition_dim=16), cogview_inputs),
    "CogView3Plus": ("CogView3PlusTransformer2DModel", dict(
        patch_size=2, in_channels=C, num_layers=2, **H, out_channels=C, text_embed_dim=TD, time_embed_dim=TD,
        condition_dim=16, pos_embed_max_size=S, sample_size=S), cogview_inputs),
    "HunyuanDiT": ("HunyuanDiT2DModel", dict(
        **H, in_channels=C, patch_size=2, sample_size=S, hidden_size=HIDDEN, num_layers=2,
        cross_attention_dim=TD, cross_attention_dim_t5=TD, pooled_projection_dim=16, text_len=T, text_len_t5=T),
        hunyuandit_inputs),
    "HunyuanDiT4": ("HunyuanDiT2DModel", dict(  # 4 blocks: block 3 has the long skip (skip_norm + skip_linear)
        **H, in_channels=C, patch_size=2, sample_size=S, hidden_size=HIDDEN, num_layers=4,
        cross_attention_dim=TD, cross_attention_dim_t5=TD, pooled_projection_dim=16, text_len=T, text_len_t5=T),
        hunyuandit_inputs),
    "HunyuanImage": ("HunyuanImageTransformer2DModel", dict(
        in_channels=C, out_channels=C, **H, num_layers=1, num_single_layers=1, num_refiner_layers=1,
        patch_size=(2, 2), text_embed_dim=TD, rope_axes_dim=(8, 8)), hunyuanimage_inputs),
    "OmniGen": ("OmniGenTransformer2DModel", dict(
        in_channels=C, patch_size=2, hidden_size=HIDDEN, num_attention_heads=HEADS, num_key_value_heads=HEADS,
        intermediate_size=128, num_layers=2, pad_token_id=0, vocab_size=1000, time_step_dim=16,
        rope_scaling={"long_factor": [1.0] * 8, "short_factor": [1.0] * 8}), omnigen_inputs),
    "Bria": ("BriaTransformer2DModel", dict(
        patch_size=1, in_channels=C * 4, num_layers=1, num_single_layers=1, **H, joint_attention_dim=TD,
        axes_dims_rope=[4, 6, 6]), flux_like_inputs),
    "PRX": ("PRXTransformer2DModel", dict(
        in_channels=C, patch_size=2, context_in_dim=TD, hidden_size=HIDDEN, mlp_ratio=4.0, num_heads=HEADS,
        depth=2, axes_dim=[8, 8]), prx_inputs),
    "LongCat": ("LongCatImageTransformer2DModel", dict(
        patch_size=1, in_channels=C * 4, num_layers=1, num_single_layers=1, **H, joint_attention_dim=TD,
        pooled_projection_dim=TD, axes_dims_rope=[4, 6, 6]), flux_like_inputs),
    "Ovis": ("OvisImageTransformer2DModel", dict(
        patch_size=1, in_channels=C * 4, out_channels=C * 4, num_layers=1, num_single_layers=1, **H,
        joint_attention_dim=TD, axes_dims_rope=(4, 6, 6)), flux_like_inputs),
    "ZImage": ("ZImageTransformer2DModel", dict(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=C, dim=96, n_layers=2, n_refiner_layers=1,
        n_heads=6, n_kv_heads=6, cap_feat_dim=TD, axes_dims=[4, 6, 6], axes_lens=[256, 32, 32]),
        zimage_inputs),
    "QwenImage21": ("QwenImage21Transformer2DModel", dict(
        patch_size=1, in_channels=C * 4, out_channels=C * 4, num_layers=2, **H, context_in_dim=TD, mlp_ratio=4,
        axes_dims_rope=(4, 6, 6)), qwen21_inputs),
}


FAMILY = {name: (_builder(getattr(diffusers, class_name), **config), inputs)
          for name, (class_name, config, inputs) in CONFIGS.items()}  # fmt: skip

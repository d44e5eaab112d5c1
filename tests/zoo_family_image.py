"""Tiny configs of diffusers' image transformers beyond tests/zoo.py, for the family sweep (tests/test_family.py).

Hidden 64 = 4 heads × 16 (Z-Image 96 = 6 × 16, so its FFN width is a multiple of 8), 16 text tokens of width 32,
batch 2, 8×8 latents: 16 image tokens after 2×2 patches. Weights re-initialised as the zoo's (`_randomize_parameters`).
Inputs are what each pipeline passes (AuraFlow: t/1000, which the model scales by 1000).

The entries from AceStep on (image, audio and 1-D transformers, a controlnet, a prior, a protein model) take token
counts that are not multiples of 16: 6×10 latents, 15 image tokens after 2×2 patches; 1-D ones ~30 tokens.
"""

import functools

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



# --- 15 image tokens (6x10 latents, 2x2 patches: 3x5), not a multiple of 16 -----------------------
GH, GW = 3, 5
LENS = torch.tensor([T, T * 3 // 4])  # text lengths, as _text_mask: all of sample 0, 3/4 of sample 1


def grid_ids(dims=3, t=0):  # (t, h, w[, 0]) ids of the 3x5 grid
    ids = torch.zeros(GH, GW, dims)
    ids[..., 0] = t
    ids[..., 1] = torch.arange(GH)[:, None]
    ids[..., 2] = torch.arange(GW)[None, :]
    return ids.reshape(GH * GW, dims)


def packed15(gen):  # packed 2x2 latents: (B, 15 tokens, 16 ch)
    return torch.randn(BATCH, GH * GW, C * 4, generator=gen)


def latents15(gen):  # (B, 4, 6, 10) latents: 15 tokens after 2x2 patches
    return torch.randn(BATCH, C, 2 * GH, 2 * GW, generator=gen)


def acestep_inputs(seed):  # 30 latent frames, 1-D patch 2: 15 tokens
    gen = g(seed)
    t = torch.rand(BATCH, generator=gen)
    return dict(hidden_states=torch.randn(BATCH, 30, 8, generator=gen), timestep=t, timestep_r=t,
                encoder_hidden_states=torch.randn(BATCH, T, TD, generator=gen),
                context_latents=torch.randn(BATCH, 30, 16, generator=gen), return_dict=False)


def bria_fibo_inputs(seed):  # padded prompt: the pipeline passes the joint mask as attention_mask
    gen = g(seed)
    mask = torch.cat([_text_mask(BATCH), torch.ones(BATCH, GH * GW, dtype=torch.long)], dim=1).bool()
    return dict(hidden_states=packed15(gen), encoder_hidden_states=torch.randn(BATCH, T, 2 * TD, generator=gen),
                text_encoder_layers=[torch.randn(BATCH, T, TD, generator=gen) for _ in range(2)],
                timestep=1000 * torch.rand(BATCH, generator=gen), img_ids=grid_ids(), txt_ids=torch.zeros(T, 3),
                joint_attention_kwargs={"attention_mask": mask[:, None, None, :]}, return_dict=False)


def bria_fibo2_inputs(seed):  # 15 image + 12 gist tokens (10 for sample 1, masked): 27
    gen = g(seed)
    return dict(hidden_states=latents15(gen), timestep=torch.rand(BATCH, generator=gen),
                encoder_hidden_states=torch.randn(BATCH, 2, T, TD, generator=gen),
                encoder_attention_mask=_text_mask(BATCH).bool(), return_dict=False)


def dreamlite_inputs(seed):  # inside its U-Net: (B, 64, 5, 6) features, 30 tokens; the U-Net's mask bias
    gen = g(seed)
    bias = (1 - _text_mask(BATCH).float()) * -10000.0
    return dict(hidden_states=torch.randn(BATCH, HIDDEN, 5, 6, generator=gen),
                encoder_hidden_states=torch.randn(BATCH, T, TD, generator=gen),
                encoder_attention_mask=bias.unsqueeze(1), return_dict=False)


def ernie_inputs(seed):  # patch 1 on (B, 16, 3, 5): 15 image + 16 text tokens
    gen = g(seed)
    text = torch.randn(BATCH, T, TD, generator=gen) * _text_mask(BATCH)[..., None]  # zero-padded as _pad_text
    return dict(hidden_states=torch.randn(BATCH, C * 4, GH, GW, generator=gen),
                timestep=1000 * torch.rand(BATCH, generator=gen), text_bth=text, text_lens=LENS, return_dict=False)


def flux3_inputs(seed):  # image-to-image: 15 image + 15 reference + 16 text tokens
    gen = g(seed)
    txt_ids = torch.zeros(T, 4)
    txt_ids[:, 3] = torch.arange(T)
    return dict(hidden_states=packed15(gen), encoder_hidden_states=torch.randn(BATCH, T, TD, generator=gen),
                timestep=torch.rand(BATCH, generator=gen), img_ids=grid_ids(4), txt_ids=txt_ids,
                image_cond_hidden_states=packed15(gen), image_cond_ids=grid_ids(4, t=10), return_dict=False)


def glm_inputs(seed):
    from diffusers.models.transformers.transformer_glm_image import GlmImageKVCache
    gen = g(seed)
    prior = torch.randint(0, 64, (BATCH, GH * GW), generator=gen)
    return dict(hidden_states=latents15(gen), encoder_hidden_states=torch.randn(BATCH, T, TD, generator=gen),
                prior_token_id=prior, prior_token_drop=torch.zeros_like(prior, dtype=torch.bool),
                timestep=torch.randint(0, 1000, (BATCH,), generator=gen).float(),
                target_size=torch.tensor([[48.0, 80.0]] * BATCH), crop_coords=torch.zeros(BATCH, 2),
                kv_caches=GlmImageKVCache(num_layers=2), return_dict=False)


def ideogram4_inputs(seed):  # packed [left pad][text][15 image]: 31 tokens, as _prepare_ids lays them out
    gen = g(seed)
    n = T + GH * GW
    position_ids = torch.zeros(BATCH, n, 3, dtype=torch.long)
    segment_ids = torch.full((BATCH, n), -1, dtype=torch.long)
    indicator = torch.zeros(BATCH, n, dtype=torch.long)
    image_pos = grid_ids().long() + 65536
    for b, num_text in enumerate(LENS.tolist()):
        offset = T - num_text
        position_ids[b, offset:T] = torch.arange(num_text)[:, None].expand(-1, 3)
        position_ids[b, T:] = image_pos
        indicator[b, offset:T], indicator[b, T:] = 3, 2
        segment_ids[b, offset:] = 1
    features = torch.randn(BATCH, n, TD, generator=gen) * (indicator == 3)[..., None]
    hidden = torch.cat([torch.zeros(BATCH, T, C * 4), packed15(gen)], dim=1)
    return dict(hidden_states=hidden, timestep=torch.rand(BATCH, generator=gen), encoder_hidden_states=features,
                position_ids=position_ids, segment_ids=segment_ids, indicator=indicator, return_dict=False)


def krea2_inputs(seed):  # 16 text + 15 image tokens; text fusion attends over 4 tapped layers per token
    gen = g(seed)
    return dict(hidden_states=packed15(gen), encoder_hidden_states=torch.randn(BATCH, T, 4, TD, generator=gen),
                timestep=torch.rand(BATCH, generator=gen),
                position_ids=torch.cat([torch.zeros(T, 3), grid_ids()]),
                encoder_attention_mask=_text_mask(BATCH).bool(), return_dict=False)


def nucleus_inputs(seed):  # 15 image queries over 15 image + 16 text keys
    gen = g(seed)
    return dict(hidden_states=packed15(gen), img_shapes=[(1, GH, GW)] * BATCH,
                encoder_hidden_states=torch.randn(BATCH, T, TD, generator=gen),
                encoder_hidden_states_mask=_text_mask(BATCH).bool(), timestep=torch.rand(BATCH, generator=gen),
                return_dict=False)


def minimax_music_inputs(seed):  # 29 latent frames + 1 time token: 30
    gen = g(seed)
    return dict(hidden_states=torch.randn(BATCH, 16, 29, generator=gen), timestep=torch.rand(BATCH, generator=gen),
                encoder_hidden_states=torch.randn(BATCH, 29, TD, generator=gen), return_dict=False)


def continuous2d_inputs(seed):  # a U-Net's transformer: (B, 64, 5, 6) features, 30 tokens
    gen = g(seed)
    return dict(hidden_states=torch.randn(BATCH, HIDDEN, 5, 6, generator=gen),
                encoder_hidden_states=torch.randn(BATCH, T, TD, generator=gen), return_dict=False)


def pixart_alpha_inputs(seed):  # PixArt-alpha 1024: resolution and aspect-ratio conditions
    gen = g(seed)
    return dict(hidden_states=latents15(gen), encoder_hidden_states=torch.randn(BATCH, T, TD, generator=gen),
                encoder_attention_mask=_text_mask(BATCH), timestep=torch.randint(0, 1000, (BATCH,), generator=gen),
                added_cond_kwargs={"resolution": torch.tensor([[48.0, 80.0]] * BATCH),
                                   "aspect_ratio": torch.tensor([[0.6]] * BATCH)}, return_dict=False)


def stable_audio3_inputs(seed, inpaint=False):  # 4 memory tokens + 26 latent frames: 30
    gen = g(seed)
    d = dict(hidden_states=torch.randn(BATCH, 16, 26, generator=gen), timestep=torch.rand(BATCH, generator=gen),
             encoder_hidden_states=torch.randn(BATCH, T, TD, generator=gen),
             global_hidden_states=torch.randn(BATCH, TD, generator=gen),
             encoder_attention_mask=_text_mask(BATCH).bool(), return_dict=False)
    if inpaint:  # cat([mask, masked latents]): 17 channels
        mask = torch.zeros(BATCH, 1, 26)
        mask[..., 8:18] = 1
        d["local_add_cond"] = torch.cat([mask, torch.randn(BATCH, 16, 26, generator=gen) * (1 - mask)], dim=1)
    return d


def longcat_audio_inputs(seed):  # 30 latent frames; text-to-audio: latent_cond is zeros, every frame valid
    gen = g(seed)
    return dict(hidden_states=torch.randn(BATCH, 30, 16, generator=gen),
                encoder_hidden_states=torch.randn(BATCH, T, TD, generator=gen),
                encoder_attention_mask=_text_mask(BATCH).bool(), timestep=torch.rand(BATCH, generator=gen),
                attention_mask=torch.ones(BATCH, 30, dtype=torch.bool), latent_cond=torch.zeros(BATCH, 30, 16),
                return_dict=False)


def prior_inputs(seed):  # 16 text + 4 (text embedding, time, image embedding, prd) tokens: 20
    gen = g(seed)
    return dict(hidden_states=torch.randn(BATCH, TD, generator=gen),
                timestep=torch.randint(0, 1000, (), generator=gen),
                proj_embedding=torch.randn(BATCH, TD, generator=gen),
                encoder_hidden_states=torch.randn(BATCH, T, TD, generator=gen),
                attention_mask=_text_mask(BATCH).bool(), return_dict=False)


def hunyuandit_controlnet_inputs(seed):
    from diffusers.models.embeddings import get_2d_rotary_pos_embed
    gen = g(seed)
    meta = torch.tensor([[1024, 1024, 48, 80, 0, 0]] * BATCH, dtype=torch.float32)
    return dict(hidden_states=latents15(gen), timestep=torch.randint(0, 1000, (BATCH,), generator=gen).float(),
                controlnet_cond=latents15(gen),
                encoder_hidden_states=torch.randn(BATCH, T, TD, generator=gen), text_embedding_mask=_text_mask(BATCH),
                encoder_hidden_states_t5=torch.randn(BATCH, T, TD, generator=gen),
                text_embedding_mask_t5=_text_mask(BATCH), image_meta_size=meta,
                style=torch.zeros(BATCH, dtype=torch.long),
                image_rotary_emb=get_2d_rotary_pos_embed(HEAD_DIM, ((0, 0), (GH, GW)), (GH, GW), output_type="pt"),
                return_dict=False)


def rfd4_inputs(seed):  # 15 residues (the last 3 of sample 1 padding): 30 token rows, 2·15·15 = 450 pair rows
    gen = g(seed)
    mask = torch.ones(BATCH, 15, dtype=torch.bool)
    mask[1, 12:] = False
    return dict(bb_ca=torch.randn(BATCH, 15, 3, generator=gen), local_latents=torch.randn(BATCH, 15, 8, generator=gen),
                bb_ca_time=torch.rand(BATCH, generator=gen), local_latents_time=torch.rand(BATCH, generator=gen),
                padding_mask=mask, token_type=torch.zeros(BATCH, 15, dtype=torch.long),
                conditioning={"is_in_context_conditioning": torch.zeros(BATCH, 15, dtype=torch.bool),
                              "supports_local_latent": torch.ones(BATCH, 15, dtype=torch.bool)}, return_dict=False)


H = dict(num_attention_heads=HEADS, attention_head_dim=HEAD_DIM)
SA3 = dict(io_channels=16, embed_dim=HIDDEN, depth=2, num_heads=HEADS, cond_token_dim=TD, global_cond_dim=TD,
           local_add_cond_dim=17, timestep_features_dim=32, num_memory_tokens=4)  # inpainting: 1 + 16 channels
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
    "AceStep": ("AceStepTransformer1DModel", dict(  # in 24 = 16 context + 8 acoustic channels; layer 0 slides (4)
        hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2, num_attention_heads=HEADS,
        num_key_value_heads=2, head_dim=HEAD_DIM, in_channels=24, audio_acoustic_hidden_dim=8, patch_size=2,
        sliding_window=4, encoder_hidden_size=TD), acestep_inputs),
    "BriaFibo": ("BriaFiboTransformer2DModel", dict(
        patch_size=1, in_channels=C * 4, num_layers=1, num_single_layers=1, **H, joint_attention_dim=2 * TD,
        axes_dims_rope=[4, 6, 6], text_encoder_dim=TD), bria_fibo_inputs),
    "BriaFibo2": ("BriaFibo2Transformer2DModel", dict(
        in_channels=C, patch_size=2, dim=HIDDEN, n_layers=2, n_refiner_layers=1, n_heads=HEADS, cap_feat_dim=TD,
        injection_layer_ids=(1,), perceiver_num_layers=1, min_num_gist_tokens=4, max_num_gist_tokens=12, gist_step=2,
        gist_min_text_len=4, gist_max_text_len=T, axes_dims=(4, 6, 6), axes_lens=(32, 16, 16)), bria_fibo2_inputs),
    "DreamLite": ("DreamLiteTransformer2DModel", dict(  # its U-Net's settings: GQA (1 kv head), rms qk norm, ff x6
        **H, in_channels=HIDDEN, num_layers=2, cross_attention_dim=TD, use_linear_projection=True,
        qk_norm="rms_norm", num_kv_heads=1, ff_mult=6), dreamlite_inputs),
    "DreamLiteNoSelfAttn": ("DreamLiteTransformer2DModel", dict(  # the "remove self-attention" blocks
        **H, in_channels=HIDDEN, num_layers=2, cross_attention_dim=TD, use_linear_projection=True,
        qk_norm="rms_norm", num_kv_heads=1, ff_mult=6, use_self_attention=False), dreamlite_inputs),
    "ErnieImage": ("ErnieImageTransformer2DModel", dict(
        hidden_size=HIDDEN, num_attention_heads=HEADS, num_layers=2, ffn_hidden_size=128, in_channels=C * 4,
        out_channels=C * 4, patch_size=1, text_in_dim=TD, rope_axes_dim=(4, 6, 6)), ernie_inputs),
    "Flux3": ("Flux3Transformer2DModel", dict(
        in_channels=C * 4, cond_in_channels=C * 4, num_layers=1, num_single_layers=1, **H, joint_attention_dim=TD,
        axes_dims_rope=(4, 4, 4, 4)), flux3_inputs),
    "GlmImage": ("GlmImageTransformer2DModel", dict(
        patch_size=2, in_channels=C, out_channels=C, num_layers=2, **H, text_embed_dim=TD, time_embed_dim=HIDDEN,
        condition_dim=16, prior_vq_quantizer_codebook_size=64), glm_inputs),
    "Ideogram4": ("Ideogram4Transformer2DModel", dict(
        in_channels=C * 4, num_layers=2, **H, intermediate_size=128, adaln_dim=HIDDEN, llm_features_dim=TD,
        mrope_section=(4, 2, 2)), ideogram4_inputs),
    "Krea2": ("Krea2Transformer2DModel", dict(
        in_channels=C * 4, num_layers=2, **H, num_key_value_heads=2, intermediate_size=128, timestep_embed_dim=32,
        text_hidden_dim=TD, num_text_layers=4, text_num_attention_heads=2, text_num_key_value_heads=2,
        text_intermediate_size=64, num_layerwise_text_blocks=1, num_refiner_text_blocks=1, axes_dims_rope=(4, 6, 6)),
        krea2_inputs),
    "NucleusMoEImage": ("NucleusMoEImageTransformer2DModel", dict(  # block 0 dense FFN, block 1 expert-choice MoE
        patch_size=2, in_channels=C * 4, num_layers=2, **H, num_key_value_heads=2, joint_attention_dim=TD,
        axes_dims_rope=(4, 6, 6), dense_moe_strategy="leave_first_block_dense", num_experts=4,
        moe_intermediate_dim=64, capacity_factors=2.0), nucleus_inputs),
    "MiniMaxMusic3": ("MiniMaxMusic3Transformer1DModel", dict(
        in_channels=16, condition_dim=TD, num_layers=2, **H, ff_inner_dim=128, rotary_dim=8,
        fourier_embedding_dim=32), minimax_music_inputs),
    "Transformer2D": ("Transformer2DModel", dict(  # continuous input, as in SD 2 / SDXL U-Nets
        **H, in_channels=HIDDEN, num_layers=2, cross_attention_dim=TD, use_linear_projection=True),
        continuous2d_inputs),
    # patched, adaLN-single: PixArt-alpha 1024's config; hidden 96 = 6 × 16, as its size conditions embed to hidden // 3
    "Transformer2DPixArt": ("Transformer2DModel", dict(
        num_attention_heads=6, attention_head_dim=HEAD_DIM, in_channels=C, out_channels=C * 2, num_layers=2,
        sample_size=S, patch_size=2, norm_type="ada_norm_single", cross_attention_dim=96, caption_channels=TD,
        use_additional_conditions=True), pixart_alpha_inputs),
    "StableAudio3": ("StableAudio3DiTModel", SA3, stable_audio3_inputs),
    "StableAudio3Inpaint": ("StableAudio3DiTModel", SA3, functools.partial(stable_audio3_inputs, inpaint=True)),
    "LongCatAudioDiT": ("LongCatAudioDiTTransformer", dict(
        dit_dim=HIDDEN, dit_depth=2, dit_heads=HEADS, dit_text_dim=TD, latent_dim=16), longcat_audio_inputs),
    "Prior": ("PriorTransformer", dict(  # Kandinsky 2.2's prior: layer norms in, prd token
        **H, num_layers=2, embedding_dim=TD, num_embeddings=T, additional_embeddings=4, norm_in_type="layer",
        embedding_proj_norm_type="layer"), prior_inputs),
    "HunyuanDiTControlNet": ("HunyuanDiT2DControlNetModel", dict(  # 6 layers: 2 blocks, their 2 controlnet linears
        **H, in_channels=C, patch_size=2, sample_size=S, hidden_size=HIDDEN, transformer_num_layers=6,
        cross_attention_dim=TD, cross_attention_dim_t5=TD, pooled_projection_dim=16, text_len=T, text_len_t5=T),
        hunyuandit_controlnet_inputs),
    "RFD4Proteina": ("RFD4ProteinaTransformer", dict(  # protein: backbone, latents and token type; pair distances
        nlayers=2, token_dim=HIDDEN, nheads=HEADS, dim_cond=TD, pair_repr_dim=TD, latent_dim=8, token_type_emb_dim=8,
        cath_emb_dim=8, t_emb_dim=TD, seq_sep_dim=8, xt_pair_dist_dim=16,
        feats_seq=("xt_bb_ca", "xt_local_latents", "token_type"),
        feats_cond_seq=("time_emb_bb_ca", "time_emb_local_latents"), feats_pair_repr=("xt_bb_ca_pair_dists",),
        feats_pair_cond=("time_emb_bb_ca", "time_emb_local_latents"), tri_mult_c=TD, num_sequence_classes=20),
        rfd4_inputs),
}


FAMILY = {name: (_builder(getattr(diffusers, class_name), **config), inputs)
          for name, (class_name, config, inputs) in CONFIGS.items()}  # fmt: skip


def _with_dreamlite_processors(build):
    """As DreamLite's U-Net builds it: its GQA-aware processor in every attention (the stock one takes no kv_heads)."""

    def build_with_processors():
        from diffusers.models.attention_processor import Attention
        from diffusers.models.unets.unet_dreamlite import DreamLiteAttnProcessor2_0

        model = build()
        for module in model.modules():
            if isinstance(module, Attention):
                module.set_processor(DreamLiteAttnProcessor2_0())
        return model

    return build_with_processors


for _name in ("DreamLite", "DreamLiteNoSelfAttn"):
    FAMILY[_name] = (_with_dreamlite_processors(FAMILY[_name][0]), FAMILY[_name][1])

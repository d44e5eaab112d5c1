"""Tiny configs of diffusers' video and audio transformers, for the family sweep (tests/test_family.py).

Hidden 64 = 4 heads × 16 unless noted (Mochi 96, so its SwiGLU widths are multiples of 8), 16 text tokens of width
32, batch 2 (Kandinsky 5: 1). Most take 2 latent frames of 6×10 patched 2×2: 30 video tokens, not a multiple of 16.
Weights re-initialised as the zoo's (`_randomize_parameters`).
"""

import diffusers
import torch
from zoo import _builder, _text_mask

B = 2
TXT = 16
TXT_DIM = 32


def builder(class_name, **config):
    return _builder(getattr(diffusers, class_name), **config)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def text_mask():
    return _text_mask(B)


H4 = dict(num_attention_heads=4, attention_head_dim=16)
FAMILY = {}  # name → (build, inputs)


def spec(name, build, inputs):
    FAMILY[name.removesuffix("Transformer3DModel").removesuffix("Model")] = (build, inputs)


# --- HunyuanVideo: 5-D latents, patch 2 -> 2x3x5 = 30 tokens -------------------------------------
def _hv_inputs(seed):
    g = gen(seed)
    return dict(
        hidden_states=torch.randn(B, 4, 2, 6, 10, generator=g),
        timestep=1000 * torch.rand(B, generator=g),
        encoder_hidden_states=torch.randn(B, TXT, TXT_DIM, generator=g),
        encoder_attention_mask=text_mask(),
        pooled_projections=torch.randn(B, TXT_DIM, generator=g),
        guidance=torch.full((B,), 6000.0),
        return_dict=False,
    )


spec("HunyuanVideoTransformer3DModel",
     builder("HunyuanVideoTransformer3DModel", in_channels=4, out_channels=4, **H4, num_layers=1,
             num_single_layers=1, num_refiner_layers=1, patch_size=2, patch_size_t=1, text_embed_dim=TXT_DIM,
             pooled_projection_dim=TXT_DIM, rope_axes_dim=(4, 6, 6), guidance_embeds=True),
     _hv_inputs)


# --- HunyuanVideo 1.5: patch 1, 2x3x5 = 30 tokens, t2v ------------------------------------------
def _hv15_inputs(seed):
    g = gen(seed)
    return dict(
        hidden_states=torch.randn(B, 4, 2, 3, 5, generator=g),
        timestep=1000 * torch.rand(B, generator=g),
        encoder_hidden_states=torch.randn(B, TXT, TXT_DIM, generator=g),
        encoder_attention_mask=text_mask().float(),
        encoder_hidden_states_2=torch.randn(B, 8, 16, generator=g),
        encoder_attention_mask_2=torch.ones(B, 8),
        image_embeds=torch.zeros(B, 8, 16),
        return_dict=False,
    )


spec("HunyuanVideo15Transformer3DModel",
     builder("HunyuanVideo15Transformer3DModel", in_channels=4, out_channels=4, **H4, num_layers=2,
             num_refiner_layers=1, mlp_ratio=4.0, patch_size=1, patch_size_t=1, text_embed_dim=TXT_DIM,
             text_embed_2_dim=16, image_embed_dim=16, rope_axes_dim=(4, 6, 6), target_size=16, task_type="t2v"),
     _hv15_inputs)


# --- LTX-Video: patchified (B, N, C) latents, 2x3x5 = 30 tokens ---------------------------------
def _ltx_inputs(seed):
    g = gen(seed)
    return dict(
        hidden_states=torch.randn(B, 2 * 3 * 5, 16, generator=g),
        encoder_hidden_states=torch.randn(B, TXT, TXT_DIM, generator=g),
        timestep=1000 * torch.rand(B, generator=g),
        encoder_attention_mask=text_mask(),
        num_frames=2, height=3, width=5,
        rope_interpolation_scale=(1 / 25.0, 32, 32),
        return_dict=False,
    )


spec("LTXVideoTransformer3DModel",
     builder("LTXVideoTransformer3DModel", in_channels=16, out_channels=16, **H4, cross_attention_dim=64,
             num_layers=2, caption_channels=TXT_DIM),
     _ltx_inputs)


# --- LTX-2: video (30 tokens) + audio (20 tokens) ----------------------------------------------
def _ltx2_inputs(seed):
    g = gen(seed)
    return dict(
        hidden_states=torch.randn(B, 2 * 3 * 5, 16, generator=g),
        audio_hidden_states=torch.randn(B, 20, 16, generator=g),
        encoder_hidden_states=torch.randn(B, TXT, TXT_DIM, generator=g),
        audio_encoder_hidden_states=torch.randn(B, TXT, TXT_DIM, generator=g),
        timestep=1000 * torch.rand(B, generator=g),
        encoder_attention_mask=text_mask().bool(),
        num_frames=2, height=3, width=5, audio_num_frames=20, fps=25.0,
        return_dict=False,
    )


spec("LTX2VideoTransformer3DModel",
     builder("LTX2VideoTransformer3DModel", in_channels=16, out_channels=16, **H4, cross_attention_dim=64,
             audio_in_channels=16, audio_out_channels=16, audio_num_attention_heads=2, audio_attention_head_dim=16,
             audio_cross_attention_dim=32, num_layers=2, caption_channels=TXT_DIM, rope_double_precision=False),
     _ltx2_inputs)


# --- CogVideoX: (B, F, C, H, W), sincos pos embed sized for 2 latent frames x 6 x 10 ------------
def _cog_inputs(seed):
    g = gen(seed)
    return dict(
        hidden_states=torch.randn(B, 2, 4, 6, 10, generator=g),
        encoder_hidden_states=torch.randn(B, TXT, TXT_DIM, generator=g),
        timestep=torch.randint(0, 1000, (B,), generator=g),
        return_dict=False,
    )


spec("CogVideoXTransformer3DModel",
     builder("CogVideoXTransformer3DModel", **H4, in_channels=4, out_channels=4, time_embed_dim=32,
             text_embed_dim=TXT_DIM, num_layers=2, sample_width=10, sample_height=6, sample_frames=5, patch_size=2,
             temporal_compression_ratio=4, max_text_seq_length=TXT),
     _cog_inputs)


# --- Mochi: (B, C, F, H, W), patch 2 -> 30 tokens -----------------------------------------------
def _masked_inputs(seed):
    """(B, C, F, H, W) latents, text with its mask, integer timesteps: Mochi, Allegro, Sana-Video."""
    g = gen(seed)
    return dict(
        hidden_states=torch.randn(B, 4, 2, 6, 10, generator=g),
        encoder_hidden_states=torch.randn(B, TXT, TXT_DIM, generator=g),
        timestep=torch.randint(0, 1000, (B,), generator=g),
        encoder_attention_mask=text_mask(),
        return_dict=False,
    )


spec("MochiTransformer3DModel",
     # hidden 96 = 6 heads x 16 and pooled/context dim 48: Mochi's SwiGLU inner dims int(8*d/3) = 256 and 128
     builder("MochiTransformer3DModel", patch_size=2, num_attention_heads=6, attention_head_dim=16, num_layers=2,
             pooled_projection_dim=48,
             in_channels=4, text_embed_dim=TXT_DIM, time_embed_dim=32, max_sequence_length=TXT),
     _masked_inputs)


# --- Allegro ------------------------------------------------------------------------------------
spec("AllegroTransformer3DModel",
     builder("AllegroTransformer3DModel", patch_size=2, patch_size_t=1, **H4, in_channels=4, out_channels=4,
             num_layers=2, cross_attention_dim=64, sample_height=6, sample_width=10, sample_frames=2,
             caption_channels=TXT_DIM),
     _masked_inputs)


# --- Latte: spatial (per frame 15 tokens) + temporal (per patch 2 frames) attention --------------
def _unmasked_inputs(seed):
    """(B, C, F, H, W) latents, integer timesteps, text without a mask: Latte, EasyAnimate."""
    g = gen(seed)
    return dict(
        hidden_states=torch.randn(B, 4, 2, 6, 10, generator=g),
        timestep=torch.randint(0, 1000, (B,), generator=g),
        encoder_hidden_states=torch.randn(B, TXT, TXT_DIM, generator=g),
        return_dict=False,
    )


spec("LatteTransformer3DModel",
     builder("LatteTransformer3DModel", **H4, in_channels=4, out_channels=8, num_layers=2,
             cross_attention_dim=64, sample_size=8, patch_size=2, norm_type="ada_norm_single",
             caption_channels=TXT_DIM, video_length=2),
     _unmasked_inputs)


# --- SkyReels-V2 (Wan-like) --------------------------------------------------------------------
def _wanlike_inputs(seed, **extra):
    g = gen(seed)
    d = dict(
        hidden_states=torch.randn(B, 4, 2, 6, 10, generator=g),
        timestep=1000 * torch.rand(B, generator=g),
        encoder_hidden_states=torch.randn(B, TXT, TXT_DIM, generator=g),
        return_dict=False,
    )
    d.update(extra)
    return d


_WAN = dict(patch_size=(1, 2, 2), **H4, in_channels=4, out_channels=4, text_dim=TXT_DIM, freq_dim=32,
            ffn_dim=256, num_layers=2, rope_max_seq_len=32)
spec("SkyReelsV2Transformer3DModel", builder("SkyReelsV2Transformer3DModel", **_WAN), _wanlike_inputs)


def _vace_inputs(seed):
    g = gen(seed + 100)
    return _wanlike_inputs(seed, control_hidden_states=torch.randn(B, 16, 2, 6, 10, generator=g),
                           control_hidden_states_scale=torch.tensor([1.0, 0.5]))


spec("WanVACETransformer3DModel",
     builder("WanVACETransformer3DModel", **_WAN, vace_layers=[0, 1], vace_in_channels=16), _vace_inputs)


# --- Cosmos (1.0 text2world): no torchvision here, so concat_padding_mask=False; 4*2*2 = 16 patch features
def _cosmos_inputs(seed):
    g = gen(seed)
    return dict(
        hidden_states=torch.randn(B, 4, 2, 6, 10, generator=g),
        timestep=torch.randint(0, 1000, (B,), generator=g).float(),
        encoder_hidden_states=torch.randn(B, TXT, TXT_DIM, generator=g),
        attention_mask=torch.ones(B, TXT),
        fps=30,
        return_dict=False,
    )


spec("CosmosTransformer3DModel",
     builder("CosmosTransformer3DModel", in_channels=4, out_channels=4, **H4, num_layers=2, mlp_ratio=2.0,
             text_embed_dim=TXT_DIM, adaln_lora_dim=16, max_size=(4, 16, 16), patch_size=(1, 2, 2),
             rope_scale=(2.0, 1.0, 1.0), concat_padding_mask=False, extra_pos_embed_type="learnable"),
     _cosmos_inputs)


# --- Sana-Video ---------------------------------------------------------------------------------
spec("SanaVideoTransformer3DModel",
     builder("SanaVideoTransformer3DModel", in_channels=4, out_channels=4, **H4, num_layers=2,
             num_cross_attention_heads=4, cross_attention_head_dim=16, cross_attention_dim=64,
             caption_channels=TXT_DIM, mlp_ratio=2.5, sample_size=8, patch_size=(1, 2, 2)),
     _masked_inputs)


# --- Kandinsky 5: (B, F, H, W, C) latents, 2x3x5 = 30 visual tokens, batch 1 --------------------
def _k5_inputs(seed):
    g = gen(seed)
    return dict(
        hidden_states=torch.randn(1, 2, 6, 10, 4, generator=g),
        encoder_hidden_states=torch.randn(1, TXT, TXT_DIM, generator=g),
        timestep=torch.tensor([500.0]),
        pooled_projections=torch.randn(1, TXT_DIM, generator=g),
        visual_rope_pos=[torch.arange(2), torch.arange(3), torch.arange(5)],
        text_rope_pos=torch.arange(TXT),
        return_dict=False,
    )


spec("Kandinsky5Transformer3DModel",
     builder("Kandinsky5Transformer3DModel", in_visual_dim=4, in_text_dim=TXT_DIM, in_text_dim2=TXT_DIM, time_dim=32,
             out_visual_dim=4, patch_size=(1, 2, 2), model_dim=64, ff_dim=128, num_text_blocks=1,
             num_visual_blocks=2, axes_dims=(4, 6, 6)),
     _k5_inputs)


# --- EasyAnimate --------------------------------------------------------------------------------
spec("EasyAnimateTransformer3DModel",
     builder("EasyAnimateTransformer3DModel", **H4, in_channels=4, out_channels=4, patch_size=2, sample_height=6,
             sample_width=10, num_layers=2, mmdit_layers=2, text_embed_dim=TXT_DIM, time_embed_dim=32,
             time_position_encoding_type="3d_rope"),
     _unmasked_inputs)


# --- Stable Audio DiT: (B, C, T) latents, T = 29 (+1 global token = 30) ----------------------------
def _sa_inputs(seed):
    from diffusers.models.embeddings import get_1d_rotary_pos_embed
    g = gen(seed)
    T = 29
    return dict(
        hidden_states=torch.randn(B, 16, T, generator=g),
        timestep=torch.rand(B, generator=g),
        encoder_hidden_states=torch.randn(B, TXT, TXT_DIM, generator=g),
        global_hidden_states=torch.randn(B, 1, TXT_DIM, generator=g),
        rotary_embedding=get_1d_rotary_pos_embed(8, T + 1, use_real=True, repeat_interleave_real=False),
        return_dict=False,
    )


spec("StableAudioDiTModel",
     builder("StableAudioDiTModel", sample_size=32, in_channels=16, num_layers=2, attention_head_dim=16,
             num_attention_heads=4, num_key_value_attention_heads=2, out_channels=16, cross_attention_dim=32,
             time_proj_dim=32, global_states_input_dim=TXT_DIM, cross_attention_input_dim=TXT_DIM),
     _sa_inputs)

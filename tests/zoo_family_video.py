"""Tiny configs of diffusers' video and audio transformers, for the family sweep (tests/test_family.py).

Hidden 64 = 4 heads × 16 unless noted (Mochi 96, so its SwiGLU widths are multiples of 8; ConsisID 96), 16 text
tokens of width 32 (Wan 2.1 I2V-based ChronoEdit and Wan-Animate: 512, which their attention hard-codes), batch 2
(Kandinsky 5, MiniMax-H3, Wan-Animate 2: 1, as their pipelines call them). Most take 2 latent frames of 6×10 patched
2×2: 30 video tokens, not a multiple of 16 (Kandinsky 6 SR cannot: its NABLA attention tiles the grid in 8×8 blocks).
Models with a KV cache (AnyFlow FAR, Wan-Animate 2, the SANA-WM refiner) run their denoising step against a cache
holding random K/V of the shapes the pipeline's prefill would write. Weights re-initialised as the zoo's
(`_randomize_parameters`).
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


# --- TransformerTemporalModel (UNet3D / I2VGen-XL temporal attention): (B*F, C, H, W), attention over the frames --
def _temporal_inputs(seed):
    g = gen(seed)
    frames = 3  # 2 videos x 3 frames of 3x5 pixels: 2*15 sequences of 3 frames, 90 rows, not a multiple of 16
    return dict(hidden_states=torch.randn(B * frames, 32, 3, 5, generator=g), num_frames=frames, return_dict=False)


spec("TransformerTemporalModel",
     builder("TransformerTemporalModel", **H4, in_channels=32, num_layers=2, norm_num_groups=8),
     _temporal_inputs)


# --- ChronoEdit (Wan 2.1 I2V): 2 latent frames (its temporal-skip RoPE path), CLIP image tokens, and the 512 text
# tokens the I2V attention hard-codes (`encoder_hidden_states.shape[1] - 512` image tokens)
I2V_TXT = 512


def _i2v_inputs(seed, channels, frames=2, **extra):
    g = gen(seed)
    d = dict(
        hidden_states=torch.randn(B, channels, frames, 6, 10, generator=g),
        timestep=1000 * torch.rand(B, generator=g),
        encoder_hidden_states=torch.randn(B, I2V_TXT, TXT_DIM, generator=g),
        encoder_hidden_states_image=torch.randn(B, 9, TXT_DIM, generator=g),
        return_dict=False,
    )
    d.update(extra)
    return d


def _chronoedit_inputs(seed):
    return _i2v_inputs(seed, channels=12)  # 4 noise + 4 mask + 4 image-latent channels


spec("ChronoEditTransformer3DModel",
     builder("ChronoEditTransformer3DModel", **{**_WAN, "in_channels": 12}, image_dim=TXT_DIM, added_kv_proj_dim=64),
     _chronoedit_inputs)


# --- Wan-Animate: 1 reference + 2 latent frames (45 tokens), pose latents, a 5-frame 8x8 face video -----------------
def _wan_animate_inputs(seed):
    g = gen(seed + 200)
    return _i2v_inputs(seed, channels=12, frames=3,
                       pose_hidden_states=torch.randn(B, 4, 2, 6, 10, generator=g),
                       face_pixel_values=2 * torch.rand(B, 3, 5, 8, 8, generator=g) - 1)


spec("WanAnimateTransformer3DModel",
     builder("WanAnimateTransformer3DModel", **H4, patch_size=(1, 2, 2), in_channels=12, latent_channels=4,
             out_channels=4, text_dim=TXT_DIM, freq_dim=32, ffn_dim=256, num_layers=2, image_dim=TXT_DIM,
             added_kv_proj_dim=64, rope_max_seq_len=32, motion_encoder_channel_sizes={"8": 16, "4": 16},
             motion_encoder_size=8, motion_style_dim=32, motion_dim=8, motion_encoder_dim=32,
             face_encoder_hidden_dim=32, face_encoder_num_heads=2, inject_face_latents_blocks=2),
     _wan_animate_inputs)


# --- Helios: 2 noisy frames (30 tokens) after short (2 frames, 30), mid (6) and long (2) history tokens: 68 ----------
def _helios_inputs(seed):
    g = gen(seed)
    # history sizes (long, mid, 1x) = (4, 2, 1) after a prefix frame, then the 2-frame chunk: the pipeline's indices
    prefix, long, mid, one, noisy = torch.arange(10).split([1, 4, 2, 1, 2])
    return dict(
        hidden_states=torch.randn(B, 4, 2, 6, 10, generator=g),
        timestep=1000 * torch.rand(B, generator=g),
        encoder_hidden_states=torch.randn(B, TXT, TXT_DIM, generator=g),
        indices_hidden_states=noisy[None],
        indices_latents_history_short=torch.cat([prefix, one])[None],
        indices_latents_history_mid=mid[None],
        indices_latents_history_long=long[None],
        latents_history_short=torch.randn(B, 4, 2, 6, 10, generator=g),
        latents_history_mid=torch.randn(B, 4, 2, 6, 10, generator=g),
        latents_history_long=torch.randn(B, 4, 4, 6, 10, generator=g),
        return_dict=False,
    )


spec("HeliosTransformer3DModel",
     builder("HeliosTransformer3DModel", patch_size=(1, 2, 2), **H4, in_channels=4, out_channels=4, text_dim=TXT_DIM,
             freq_dim=32, ffn_dim=256, num_layers=2, rope_dim=(4, 6, 6)),
     _helios_inputs)


# --- AnyFlow (bidirectional flow map): (B, F, C, H, W), per-frame source/target timesteps, frame 0 as context -------
def _anyflow_inputs(seed):
    g = gen(seed)
    t = (1000 * torch.rand(B, 1, generator=g)).repeat(1, 2)
    t[:, :1] = 0  # the pipeline's video-context frame
    return dict(
        hidden_states=torch.randn(B, 2, 4, 6, 10, generator=g),
        timestep=t,
        r_timestep=t * 0.5,
        encoder_hidden_states=torch.randn(B, TXT, TXT_DIM, generator=g),
        return_dict=False,
    )


spec("AnyFlowTransformer3DModel",
     builder("AnyFlowTransformer3DModel", patch_size=(1, 2, 2), **H4, in_channels=4, out_channels=4,
             text_dim=TXT_DIM, freq_dim=32, ffn_dim=256, num_layers=2),
     _anyflow_inputs)


# --- ConsisID (CogVideoX + face identity): hidden 96 = 6 x 16 so the face cross-attention's kv width 2/3 * 96 = 64 --
def _consisid_inputs(seed):
    from diffusers.models.embeddings import get_3d_rotary_pos_embed
    from diffusers.pipelines.consisid.pipeline_consisid import get_resize_crop_region_for_grid
    g = gen(seed)
    crops = get_resize_crop_region_for_grid((3, 5), 5, 3)
    return dict(
        hidden_states=torch.randn(B, 2, 8, 6, 10, generator=g),  # 4 noise + 4 image-latent channels
        encoder_hidden_states=torch.randn(B, TXT, TXT_DIM, generator=g),
        timestep=torch.randint(0, 1000, (B,), generator=g),
        image_rotary_emb=get_3d_rotary_pos_embed(16, crops, grid_size=(3, 5), temporal_size=2),
        id_cond=torch.randn(B, 32, generator=g),
        id_vit_hidden=[torch.randn(B, 17, 64, generator=g) for _ in range(2)],
        return_dict=False,
    )


spec("ConsisIDTransformer3DModel",
     builder("ConsisIDTransformer3DModel", num_attention_heads=6, attention_head_dim=16, in_channels=8, out_channels=4,
             time_embed_dim=32, text_embed_dim=TXT_DIM, num_layers=2, sample_width=10, sample_height=6,
             sample_frames=5, patch_size=2, temporal_compression_ratio=4, max_text_seq_length=TXT,
             use_rotary_positional_embeddings=True, is_train_face=True, is_kps=False, cross_attn_interval=2,
             cross_attn_dim_head=16, cross_attn_num_heads=4, LFE_id_dim=32, LFE_vit_dim=64, LFE_depth=2,
             LFE_dim_head=16, LFE_num_heads=4, LFE_num_id_token=2, LFE_num_querie=8, LFE_output_dim=64,
             LFE_ff_mult=2, LFE_num_scale=2),
     _consisid_inputs)


# --- HunyuanVideo FramePack (vanilla sampling): 30 noisy + 30 clean + 6 (2x) + 2 (4x) history tokens = 68 -----------
def _framepack_inputs(seed):
    g = gen(seed)
    prefix, four, two, one, noisy = torch.arange(10).split([1, 4, 2, 1, 2])  # history sizes (4, 2, 1), 2-frame window
    return dict(
        hidden_states=torch.randn(B, 4, 2, 6, 10, generator=g),
        timestep=1000 * torch.rand(B, generator=g),
        encoder_hidden_states=torch.randn(B, TXT, TXT_DIM, generator=g),
        encoder_attention_mask=text_mask(),
        pooled_projections=torch.randn(B, TXT_DIM, generator=g),
        image_embeds=torch.randn(B, 8, TXT_DIM, generator=g),
        indices_latents=noisy,
        guidance=torch.full((B,), 10000.0),
        latents_clean=torch.randn(B, 4, 2, 6, 10, generator=g),
        indices_latents_clean=torch.cat([prefix, one]),
        latents_history_2x=torch.randn(B, 4, 2, 6, 10, generator=g),
        indices_latents_history_2x=two,
        latents_history_4x=torch.randn(B, 4, 4, 6, 10, generator=g),
        indices_latents_history_4x=four,
        return_dict=False,
    )


spec("HunyuanVideoFramepackTransformer3DModel",
     builder("HunyuanVideoFramepackTransformer3DModel", in_channels=4, out_channels=4, **H4, num_layers=1,
             num_single_layers=1, num_refiner_layers=1, patch_size=2, patch_size_t=1, text_embed_dim=TXT_DIM,
             pooled_projection_dim=TXT_DIM, rope_axes_dim=(4, 6, 6), has_image_proj=True, image_proj_dim=TXT_DIM,
             has_clean_x_embedder=True),
     _framepack_inputs)


# --- JoyImage Edit: (B, items, C, 1, H, W), a reference image and the target: 2 x 15 = 30 tokens ------------------
_JOY = dict(patch_size=[1, 2, 2], in_channels=4, hidden_size=64, num_attention_heads=4, text_dim=TXT_DIM,
            num_layers=2, rope_dim_list=[4, 6, 6])


def _joy_inputs(seed):
    g = gen(seed)
    return dict(hidden_states=torch.randn(B, 2, 4, 1, 6, 10, generator=g), timestep=1000 * torch.rand(B, generator=g),
                encoder_hidden_states=torch.randn(B, TXT, TXT_DIM, generator=g), return_dict=False)


spec("JoyImageEditTransformer3DModel", builder("JoyImageEditTransformer3DModel", **_JOY), _joy_inputs)


# --- JoyImage Edit Plus: padded patch sequences, target 3x5 + a reference of another size per sample (23 and 24) --
def _joy_plus_inputs(seed):
    g = gen(seed)
    shape_list = [[(1, 3, 5), (1, 2, 4)], [(1, 3, 5), (1, 3, 3)]]
    patches = torch.randn(B, 24, 4, 1, 2, 2, generator=g)
    patches[0, 23:] = 0  # sample 0 holds 23 patches; the pipeline pads to the longest
    return dict(hidden_states=patches, timestep=1000 * torch.rand(B, generator=g),
                encoder_hidden_states=torch.randn(B, TXT, TXT_DIM, generator=g),
                encoder_hidden_states_mask=text_mask(), shape_list=shape_list, return_dict=False)


spec("JoyImageEditPlusTransformer3DModel", builder("JoyImageEditPlusTransformer3DModel", **_JOY), _joy_plus_inputs)


# --- Kandinsky 6 (video + audio): (B, T, H, W, 2C+1), 2 frames + the appended reference frame (45 tokens), 21 audio
# latents; released-checkpoint flags (text padding, cross-modal RoPE and gates, fixed modulation, token types)
def _k6_inputs(seed):
    g = gen(seed)
    token_types = torch.zeros(B, 3, dtype=torch.long)
    token_types[:, -1] = 1
    return dict(
        hidden_states=torch.randn(B, 3, 6, 10, 9, generator=g),
        encoder_hidden_states=torch.randn(B, TXT, TXT_DIM, generator=g),
        pooled_projections=torch.randn(B, TXT_DIM, generator=g),
        timestep=1000 * torch.rand(B, generator=g),
        audio_hidden_states=torch.randn(B, 21, 8, generator=g),
        visual_rope_pos=(torch.tensor([0, 1, 0]), torch.arange(3), torch.arange(5)),
        encoder_attention_mask=text_mask().bool(),
        visual_token_type_ids=token_types,
        return_dict=False,
    )


spec("Kandinsky6Transformer3DModel",
     builder("Kandinsky6Transformer3DModel", in_visual_dim=4, out_visual_dim=4, in_text_dim=TXT_DIM,
             in_text_dim2=TXT_DIM, time_dim=32, patch_size=(1, 2, 2), model_dim=64, ff_dim=128, num_text_blocks=1,
             num_visual_blocks=2, axes_dims=(4, 6, 6), in_audio_dim=8, out_audio_dim=8, text_token_padding=True,
             ca_rope=True, cross_gates=True, fix_modulation=True, visual_token_type_num_embeddings=2),
     _k6_inputs)


# --- MiniMax-H3: one packed sequence of 16 text + 15 conditioning video + 14 audio + 30 target video rows = 75,
# batch 1 (the pipeline's; the batch axis only replicates the layout). 6 heads x 16 = 96 > hidden 64, as released.
def _minimax_inputs(seed):
    g = gen(seed)
    text, cond, audio, video = 16, 15, 14, 30
    n = text + cond + audio + video
    position_ids = torch.zeros(n, 3, dtype=torch.float64)
    position_ids[:text, 0] = torch.arange(text)
    grid = torch.stack(torch.meshgrid(torch.arange(3.0), torch.arange(5.0), indexing="ij"), -1).reshape(-1, 2)
    position_ids[text:text + cond, 0] = text
    position_ids[text:text + cond, 1:] = grid
    position_ids[text + cond:text + cond + audio, 0] = (text + torch.arange(7.0)).repeat(2)
    position_ids[text + cond + audio:, 0] = (text + torch.arange(2.0)).repeat_interleave(15)
    position_ids[text + cond + audio:, 1:] = grid.repeat(2, 1)
    video_indices = torch.cat([torch.arange(text, text + cond), torch.arange(text + cond + audio, n)])
    audio_indices = torch.arange(text + cond, text + cond + audio)
    token_tags = torch.zeros(n, dtype=torch.long)
    token_tags[:text] = 1
    token_tags[audio_indices] = 2
    timestep_indices = torch.ones(n, dtype=torch.long)  # clean text and conditioning rows: timestep 0
    timestep_indices[audio_indices] = 0
    timestep_indices[text + cond + audio:] = 0
    return dict(
        hidden_states=torch.randn(1, cond + video, 16, generator=g),
        audio_hidden_states=torch.randn(1, audio, 8, generator=g),
        encoder_hidden_states=torch.randn(1, text, TXT_DIM, generator=g),
        timestep=torch.tensor([0.7, 0.0]),
        timestep_indices=timestep_indices, token_tags=token_tags, position_ids=position_ids,
        video_indices=video_indices, audio_indices=audio_indices, text_indices=torch.arange(text),
        return_dict=False,
    )


spec("MiniMaxH3Transformer3DModel",
     builder("MiniMaxH3Transformer3DModel", num_attention_heads=6, attention_head_dim=16, hidden_size=64, num_layers=2,
             num_refiner_layers=1, ffn_dim=128, in_channels=4, audio_in_channels=8, patch_size=(1, 2, 2),
             text_dim=TXT_DIM, freq_dim=32, time_embed_hidden_dim=64, time_embed_dim=32, rope_freq_dim=2),
     _minimax_inputs)


# --- Motif-Video I2V: [latents | condition | mask] channels, SigLIP-like image tokens, text cross-attention in the
# dual and single blocks, one decoder single block
def _motif_inputs(seed):
    g = gen(seed)
    return dict(
        hidden_states=torch.randn(B, 9, 2, 6, 10, generator=g),
        timestep=1000 * torch.rand(B, generator=g),
        encoder_hidden_states=torch.randn(B, TXT, TXT_DIM, generator=g),
        encoder_attention_mask=text_mask(),
        image_embeds=torch.randn(B, 8, TXT_DIM, generator=g),
        return_dict=False,
    )


spec("MotifVideoTransformer3DModel",
     builder("MotifVideoTransformer3DModel", in_channels=9, out_channels=4, **H4, num_layers=1, num_single_layers=2,
             num_decoder_layers=1, patch_size=2, patch_size_t=1, text_embed_dim=TXT_DIM, image_embed_dim=TXT_DIM,
             rope_axes_dim=(4, 6, 6), enable_text_cross_attention_dual=True, enable_text_cross_attention_single=True),
     _motif_inputs)


# --- AnyFlow FAR (chunk-causal flow map): the autoregressive step over chunk 3 of (1, 2, 2) frames, 30 tokens, that
# attends through the KV cache to the 2 compressed tokens of chunk 1 (FAR context, (1, 4, 4) patches) and the 30 of
# chunk 2; the cache holds what the pipeline's prefill step would have written (random here)
def _anyflow_far_inputs(seed):
    g = gen(seed)
    heads, head_dim = H4["num_attention_heads"], H4["attention_head_dim"]
    kv_cache = {layer: {"full_cache": torch.randn(2, B, heads, 2 * 2 * 15, head_dim, generator=g),
                        "compressed_cache": torch.randn(2, B, heads, 2 * 2 * 2, head_dim, generator=g)}
                for layer in range(2)}
    t = (1000 * torch.rand(B, 1, generator=g)).repeat(1, 2)
    return dict(
        hidden_states=torch.randn(B, 2, 4, 6, 10, generator=g),
        timestep=t,
        r_timestep=t * 0.5,
        encoder_hidden_states=torch.randn(B, TXT, TXT_DIM, generator=g),
        chunk_partition=[1, 2, 2],
        kv_cache=kv_cache,
        kv_cache_flag={"num_cached_chunks": 2, "is_cache_step": False},
        return_dict=False,
    )


spec("AnyFlowFARTransformer3DModel",
     builder("AnyFlowFARTransformer3DModel", patch_size=(1, 2, 2), compressed_patch_size=(1, 4, 4), full_chunk_limit=2,
             **H4, in_channels=4, out_channels=4, text_dim=TXT_DIM, freq_dim=32, ffn_dim=256, num_layers=2,
             chunk_partition=(1, 2, 2)),
     _anyflow_far_inputs)


# --- Wan-Animate 2 (in-context reference through a KV cache): the "cached" denoising pass, batch 1 (the pipeline's),
# 3 generation frames of 3x5 (45 tokens) against 2 cached reference frames (30 tokens) through the flex BlockMask;
# CLIP image tokens at the model's fixed width 1280
def _wan_animate2_inputs(seed):
    from diffusers.models.transformers.transformer_wan_animate_2 import WanAnimate2KVCache
    g = gen(seed)
    kv_cache = WanAnimate2KVCache(2)
    for layer in kv_cache.layer_caches:
        layer.store(torch.randn(1, 30, 4, 16, generator=g), torch.randn(1, 30, 4, 16, generator=g))
    return dict(
        hidden_states=[torch.randn(4, 3, 6, 10, generator=g)],
        timestep=torch.tensor([700.0]),
        encoder_hidden_states=[torch.randn(TXT, TXT_DIM, generator=g)],
        condition_latents=[torch.randn(4, 3, 6, 10, generator=g)],
        kv_cache=kv_cache,
        kv_cache_mode="cached",
        seq_len=45,
        encoder_hidden_states_image=torch.randn(1, 17, 1280, generator=g),
        reference_grid_sizes=torch.tensor([[2, 3, 5]]),
        origin_len=5,  # 5 video frames: 2 latent frames (+1 reference) at 3x5 tokens of 16x16 pixels
        origin_area=[48, 80],
        return_dict=False,
    )


spec("WanAnimate2Transformer3DModel",
     builder("WanAnimate2Transformer3DModel", patch_size=(1, 2, 2), text_len=24, in_dim=8, dim=64, ffn_dim=128,
             freq_dim=32, text_dim=TXT_DIM, out_dim=4, num_heads=4, num_layers=2),
     _wan_animate2_inputs)


# --- Kandinsky 6 SR (text-free, NABLA sparse attention on flex): the token grid must tile into 8x8 blocks, so the
# token count is a multiple of 64 here by construction: 2 frames of 8x8 tokens
def _k6sr_inputs(seed):
    g = gen(seed)
    latents = torch.randn(B, 2, 8, 8, 4, generator=g)
    anchor = torch.randn(B, 2, 8, 8, 4, generator=g)
    anchor_mask = torch.ones(B, 2, 8, 8, 1)
    return dict(hidden_states=torch.cat([latents, anchor, anchor_mask], dim=-1),
                timestep=1000 * torch.rand(B, generator=g), return_dict=False)


spec("Kandinsky6SRTransformer3DModel",
     builder("Kandinsky6SRTransformer3DModel", in_visual_dim=4, out_visual_dim=8, time_dim=32, patch_size=(1, 1, 1),
             model_dim=64, ff_dim=128, num_visual_blocks=2, axes_dims=(4, 6, 6)),
     _k6sr_inputs)


# --- SANA-WM (camera-controlled, GDN linear attention + a softmax block): 17 frames at 96x160 pixels -> 3 latent
# frames of 3x5 (45 tokens) through the LTX-2 VAE strides, camera inputs built by the pipeline's own cam_utils
def _sana_wm_inputs(seed):
    import numpy as np
    from diffusers.pipelines.sana_wm.cam_utils import action_string_to_c2w, prepare_camera
    g = gen(seed)
    c2w = action_string_to_c2w("w-8,jw-8")[:17].astype(np.float32)
    intrinsics = np.broadcast_to(np.array([80.0, 80.0, 80.0, 48.0], dtype=np.float32), (17, 4)).copy()
    cam = prepare_camera(c2w, intrinsics, target_size=(96, 160), vae_stride=(8, 32, 32))
    timestep = torch.full((B, 1, 3), 1000 * torch.rand(1, generator=g).item())
    timestep[:, :, 0] = 0  # the first latent frame is the clean conditioning anchor
    return dict(
        hidden_states=torch.randn(B, 4, 3, 3, 5, generator=g),
        timestep=timestep,
        encoder_hidden_states=torch.randn(B, 1, TXT, TXT_DIM, generator=g),
        mask=text_mask(),
        data_info={"img_hw": torch.tensor([[96.0, 160.0]])},
        camera_conditions=cam["raymap"][None].repeat(B, 1, 1),
        chunk_plucker=cam["chunk_plucker"][None].repeat(B, 1, 1, 1, 1),
        return_dict=False,
    )


spec("SanaWMTransformer3DModel",
     builder("SanaWMTransformer3DModel", in_channels=4, num_layers=2, hidden_size=64, num_attention_heads=4,
             softmax_every_n=2, linear_head_dim=16, chunk_plucker_post_attn_blocks=2, caption_channels=TXT_DIM,
             mlp_ratio=2.0),
     _sana_wm_inputs)


# --- SANA-WM refiner (LTX-2 video stream, sliding-window KV cache): an "inject" denoising step of the AR block of
# frames 3..4 (2 x 15 = 30 tokens) attending to 1 sink frame (pre-RoPE K/V) and 1 history frame (post-RoPE K/V)
_REFINER = dict(in_channels=16, out_channels=16, **H4, cross_attention_dim=64, audio_in_channels=16,
                audio_out_channels=16, audio_num_attention_heads=2, audio_attention_head_dim=16,
                audio_cross_attention_dim=32, num_layers=2, caption_channels=TXT_DIM, rope_double_precision=False)


def _refiner_inputs(seed):
    from diffusers.models.transformers.transformer_sana_wm_refiner import SanaWMRefinerKVCache
    g = gen(seed)
    rope_model = diffusers.SanaWMLTX2RefinerTransformer3DModel(**_REFINER)  # for its RoPE, which learns nothing
    kv_cache = SanaWMRefinerKVCache(2)
    for layer in kv_cache.layer_caches:
        layer.store_sink(torch.randn(B, 15, 64, generator=g), torch.randn(B, 15, 64, generator=g))
        layer.store_history(torch.randn(B, 15, 64, generator=g), torch.randn(B, 15, 64, generator=g))
    kv_cache.sink_pe = rope_model.build_rotary_emb_for_absolute_positions(B, [1], 3, 5, torch.device("cpu"), 16.0)
    return dict(
        hidden_states=torch.randn(B, 30, 16, generator=g),
        encoder_hidden_states=torch.randn(B, TXT, TXT_DIM, generator=g),
        timestep=torch.full((B, 30), 0.6 * 1000),
        video_rotary_emb=rope_model.build_rotary_emb_for_absolute_positions(B, [3, 4], 3, 5, torch.device("cpu"),
                                                                            16.0),
        encoder_attention_mask=text_mask(),
        kv_cache=kv_cache,
        kv_cache_mode="inject",
        return_dict=False,
    )


spec("SanaWMLTX2RefinerTransformer3DModel",
     builder("SanaWMLTX2RefinerTransformer3DModel", **_REFINER), _refiner_inputs)

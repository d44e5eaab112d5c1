"""Quickstart: compile a small diffusers DiT with the lynx backend on CPU and see what it did.

    python examples/quickstart.py

Builds a DiTTransformer2DModel (4 blocks, hidden 128, random weights), prints lynx's per-layer decisions, then runs
it three ways from the same inputs — Inductor dense, lynx simulate (2:4 + norm compensation), lynx simulate without
norm compensation — and prints each output's error relative to dense. Random weights lack the activation outliers of
trained DiTs, so these errors overstate what a trained model loses; they show the mechanics, not the quality.
"""

import time

import torch
from diffusers import DiTTransformer2DModel

import lynx_compile


def build_dit() -> DiTTransformer2DModel:
    torch.manual_seed(0)
    model = DiTTransformer2DModel(
        num_attention_heads=4, attention_head_dim=32, in_channels=4, out_channels=8, num_layers=4,
        sample_size=16, patch_size=2, num_embeds_ada_norm=10,
    )  # fmt: skip
    with torch.no_grad():  # diffusers zero-initialises adaLN and the output projection; give every layer a signal
        for param in model.parameters():
            param.normal_(0, param.shape[-1] ** -0.5 if param.ndim > 1 else 0.02)
    return model.eval()


def main() -> None:
    model = build_dit()
    g = torch.Generator().manual_seed(1)
    inputs = dict(
        hidden_states=torch.randn(2, 4, 16, 16, generator=g),  # 2 images × 64 tokens
        timestep=torch.tensor([10, 500]),
        class_labels=torch.tensor([3, 7]),
        return_dict=False,
    )

    report = lynx_compile.explain(model, **inputs)
    print(report, end="\n\n")

    outputs = {}
    for label, options in [
        ("dense (Inductor)", {"execution": "dense"}),
        ("lynx 2:4 + norm", {}),
        ("lynx 2:4, no norm", {"norm_compensation": False}),
    ]:
        torch.compiler.reset()
        start = time.perf_counter()
        with torch.no_grad():
            outputs[label] = torch.compile(model, backend="lynx", options=options)(**inputs)[0]
        print(f"compiled + ran {label:<18} in {time.perf_counter() - start:5.1f} s")

    dense = outputs["dense (Inductor)"]
    print("\noutput error relative to dense: ‖y − y_dense‖ / ‖y_dense‖")
    for label, out in outputs.items():
        print(f"  {label:<18} {((out - dense).norm() / dense.norm()).item():.4f}")


if __name__ == "__main__":
    main()

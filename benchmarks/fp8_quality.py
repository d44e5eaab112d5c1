"""FP8 × 2:4 quality (issue 13 item 3): the error of FP8 + 2:4 against dense, beside FP8 alone and 2:4 alone, with the
reference numerics of `lynx_compile.fp8` (rowwise e4m3 activations and weights; prune first, then quantize).

    python benchmarks/fp8_quality.py [--samples 100] [--json out.json]

- the trained tiny DiT: the output error of each linear lynx would sparsify (less the per-sample ones, dense in
  every variant as a pipeline's batch keeps them) on the calibration inputs' activations, and the sampled result
  (100 digits, 25 DDIM steps, fixed noise) with all of them run each way (forward hooks), against dense samples;
- full-size random-weight layers at FLUX's shapes (K, N), 1024 token rows whose channels span three decades of
  scale (activation outliers, as trained models have; Gaussian weights): the output error of each.
Errors are relative L2 against the fp32 dense result. CPU; minutes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent.parent / "examples"), str(Path(__file__).parent)]
import lynx_compile  # noqa: E402
from lynx_compile.eager import hooked, linears_of, relative_error  # noqa: E402
from lynx_compile.fp8 import fp8_linear_ref  # noqa: E402
from lynx_compile.method import Method, sparse_linear_ref  # noqa: E402
from sample_metrics import against_reference  # noqa: E402
from timestep_sensitivity import per_sample_layers  # noqa: E402
from tiny_dit import calibration_inputs, load_model, sample, sample_quality  # noqa: E402

VARIANTS = {
    "fp8": lambda x, layer: fp8_linear_ref(x, layer.weight, layer.bias),
    "2:4 + norm": lambda x, layer: sparse_linear_ref(x, layer.weight, layer.bias, Method()),
    "fp8 + 2:4 + norm": lambda x, layer: fp8_linear_ref(x, layer.weight, layer.bias, Method()),
}
FLUX_SHAPES = [(3072, 3072), (3072, 12288), (12288, 3072), (15360, 3072), (3072, 21504)]  # (K, N)


def run_as(variant: str, layers: dict):
    """Within the block, `layers` compute their output the variant's way."""
    return hooked(layers, lambda name: lambda module, args, out: VARIANTS[variant](args[0], module))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--rows", type=int, default=1024, help="token rows of the full-size layers")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    torch.manual_seed(0)
    model = load_model()
    labels = torch.arange(args.samples) % 10
    noise = torch.randn(args.samples, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    calls = calibration_inputs(labels[:40] if args.samples >= 40 else torch.arange(40) % 10,
                               torch.randn(40, 1, 16, 16, generator=torch.Generator().manual_seed(2)))  # fmt: skip
    per_sample = per_sample_layers(model, calls[0])
    # the layers lynx would sparsify (an unbounded calibration: min_features, K % m ... applied), less per-sample ones
    everything = lynx_compile.calibrate(model, calls, target=1e9, options={"exclude": sorted(per_sample)},
                                        progress_bar=False)  # fmt: skip
    modules = linears_of(model)
    tokens = {name: modules[name] for name, layer in everything.layers.items() if layer.decision == "sparse"}

    inputs: dict[str, list[torch.Tensor]] = {name: [] for name in tokens}  # each layer's activations, all calls
    with hooked(tokens, lambda name: lambda module, args, out: inputs[name].append(args[0].detach()) or None):
        for call in calls:
            model(**call)
    layer_errors = {variant: {} for variant in VARIANTS}
    with torch.no_grad():
        for name, layer in tokens.items():
            x = torch.cat([a.reshape(-1, a.shape[-1]) for a in inputs[name]])
            dense = torch.nn.functional.linear(x, layer.weight, layer.bias)
            for variant, run in VARIANTS.items():
                layer_errors[variant][name] = relative_error(run(x, layer), dense)

    with torch.no_grad():
        dense_samples = sample(model, labels, noise)
    sampled, samples = {"dense": sample_quality(dense_samples, labels)}, {}
    for variant in VARIANTS:
        with run_as(variant, tokens):
            samples[variant] = sample(model, labels, noise)
        sampled[variant] = sample_quality(samples[variant], labels, dense_samples)
    # what FP8 adds on top of 2:4, seen directly: the two sample sets against each other
    sampled["fp8 + 2:4 + norm"]["against 2:4 + norm"] = against_reference(samples["fp8 + 2:4 + norm"],
                                                                           samples["2:4 + norm"])  # fmt: skip

    full_size = []
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for k, n in FLUX_SHAPES:
            x = torch.randn(args.rows, k, generator=g) * torch.logspace(-2, 1, k)[torch.randperm(k, generator=g)]
            layer = torch.nn.Linear(k, n)
            torch.nn.init.normal_(layer.weight, std=k**-0.5, generator=g)
            dense = layer(x)
            full_size.append({"K": k, "N": n, **{v: relative_error(run(x, layer), dense) for v, run in
                                                  VARIANTS.items()}})  # fmt: skip

    print(f"{'':24} {'fp8':>8} {'2:4+norm':>9} {'fp8+2:4':>8}")
    for label, errors in (("tiny DiT layers, median", {v: statistics.median(e.values()) for v, e in
                                                      layer_errors.items()}),  # fmt: skip
                          *((f"K={row['K']} N={row['N']}", row) for row in full_size)):
        print(f"{label:24} " + " ".join(f"{errors[v]:8.4f}" for v in VARIANTS))
    for variant, quality in sampled.items():
        extra = "" if variant == "dense" else f", {quality['psnr_db']:.3f} dB, rel {quality['relative_error']:.5f}"
        print(f"sampled, {variant}: class accuracy {quality['class_accuracy']:.2f}{extra}")
    apart = sampled["fp8 + 2:4 + norm"]["against 2:4 + norm"]
    print(f"sampled, fp8 + 2:4 against 2:4 alone: {apart['psnr_db']:.2f} dB, rel {apart['relative_error']:.4f}")
    result = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "machine": "CPU",
              "command": "python " + " ".join(sys.argv), "per_sample_layers_dense": sorted(per_sample),
              "layers": sorted(tokens),
              "tiny_layer_errors": layer_errors, "tiny_sampled": sampled, "full_size": full_size,
              "seconds": time.perf_counter() - started}  # fmt: skip
    print(f"{result['seconds']:.0f} s in all")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()

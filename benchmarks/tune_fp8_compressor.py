"""Sweep the one-pass FP8 compressor's blocking on given shapes and folds: which (pairs of groups a chunk, warps a
program, row held in registers or read twice, registers a thread capped) is fastest, for `planned` to choose.

    python benchmarks/tune_fp8_compressor.py [name ...]   # sm_90 GPU; prints a table, writes
                                                         # tune_fp8_compressor.json to $OUT
    python benchmarks/tune_fp8_compressor.py --compile-shard I/N [name ...]  # compiles (runs once, untimed) every
        # Nth variant from the Ith into Triton's cache: N of these at once first make the timed run's compiles hits
    --uncapped: no `maxnreg` variants; --loose: chunks padding up to a third of a row (not an eighth)

Per case (tokens M, K, the fold as FLUX runs it), every variant: chunks of P pairs of groups (P = 32 … 512, at most
an eighth of the row padding), W warps a program (1 to 4 pairs of groups a thread a chunk), the row held (where a
thread holds at most 16 pairs of the row) or read twice, `maxnreg` none, 64, 80 or 96. Each is the compressor
the layer runs (prune, norm scale, quantize, compress; the GPU's saturating cast), a held row's first look at it
taking the largest magnitude alone or every statistic (as before session 32), timed by CUDA-graph replays
(median), beside the dense quantizer and the blocking `planned` chooses today, in the same process, on random
(never zero) data. A variant counts only where its operand equals the chosen blocking's bit for bit and its row scale
to within a rounding of the order it sums ‖x‖² in.
"""

from __future__ import annotations

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lynx_compile.folds import IDENTITY, FoldSpec, compress_fp8, loading, quantize_fp8  # noqa: E402
from lynx_compile.kernels import quantize_fp8_single_pass as single_pass  # noqa: E402
from lynx_compile.kernels.grid import cdiv  # noqa: E402
from lynx_compile.timing import cuda_graph_ms  # noqa: E402

GELU = FoldSpec("activation", ("gelu_tanh",))
CAT_GELU = FoldSpec("concat", ("none", "gelu_tanh"))
CASES = [  # (name, M, the pieces' widths, fold): FLUX 1024²'s compressors as its layers take them
    ("flux k3072", 4608, (3072,), IDENTITY),  # attention output, q/k/v, MLP up, single block in
    ("flux mlp down gelu", 4608, (12288,), GELU),
    ("flux single out cat", 4608, (3072, 12288), CAT_GELU),
    ("flux mlp down", 4608, (12288,), IDENTITY),  # as bench_fp8_sparse.py times the layer
    ("flux txt mlp down gelu", 512, (12288,), GELU),
    ("k4096", 4608, (4096,), IDENTITY),  # rows held in chunks, longer than FLUX's
    ("wan k5120", 14040, (5120,), IDENTITY),  # Wan2.1-14B's q/k/v, attention output and FFN up at 14040 tokens
    ("k8192", 4608, (8192,), IDENTITY),  # the longest row held
    # widths whose pairs of groups no power of two near 128 divides: `row_blocks` pads chunks at most a tenth
    ("k1152", 4608, (1152,), IDENTITY),  # DiT-XL's and PixArt's hidden size (144 pairs)
    ("k4608", 4608, (4608,), IDENTITY),  # DiT-XL's and PixArt's MLP down (576 pairs)
    ("k1536", 4608, (1536,), IDENTITY),  # SD3's hidden size (192 pairs)
    ("k4608 gelu", 4608, (4608,), GELU),  # DiT-XL's and PixArt's MLP down as the layer takes it: a held row, GELU
]
REGISTERS = (None, 64, 80, 96)


def variants(row_pairs: int, padding: int, registers: tuple[int | None, ...]):
    """Every blocking swept for rows of `row_pairs` pairs of groups, padded at most 1 / `padding` of a row, each
    with each register cap: (its description for the results, the arguments `single_pass.launch` takes for it)."""
    for pairs in (32, 64, 128, 256, 512):
        chunks = cdiv(row_pairs, pairs)
        if chunks * pairs - row_pairs > row_pairs // padding:
            continue
        for warps in (1, 2, 4, 8):
            if not 1 <= pairs // (32 * warps) <= 4:
                continue
            for held in (True, False):
                if held and row_pairs > 16 * 32 * warps or not held and chunks == 1:
                    continue
                # a held row's first look at it: the largest magnitude alone (the energies with the values,
                # as a row read twice), or every statistic (sessions 12-31)
                for first in ("magnitudes", "statistics") if held else ("magnitudes",):
                    for cap in registers:
                        yield ({"blocks": (1, pairs, chunks), "warps": warps, "held": held, "first": first,
                                "maxnreg": cap},
                               dict(blocks=(1, pairs, chunks), num_warps=warps, held_pairs=pairs * chunks if held
                                    else 0, raw_max=first == "magnitudes", max_registers=cap))  # fmt: skip


def sweep(name: str, m: int, widths: tuple[int, ...], fold: FoldSpec, shard: tuple[int, int] | None = None,
          registers: tuple[int | None, ...] = REGISTERS, padding: int = 8) -> dict:
    pieces = [torch.randn(m, width, device="cuda", dtype=torch.bfloat16) for width in widths]
    operands, loader = loading(pieces, fold)
    k = loader.width
    values, metadata, _ = compress_fp8(pieces, fold)  # outputs as the layer allocates them

    def compress(**blocking):
        out_values, out_metadata = torch.zeros_like(values), torch.zeros_like(metadata)
        scale = single_pass.launch(operands, loader, out_values, out_metadata, True, True, True, **blocking)
        return out_values, out_metadata, scale

    chosen = compress()
    if shard is not None:
        for index, (_, blocking) in enumerate(variants(k // 8, padding, registers)):
            if index % shard[1] == shard[0]:
                compress(**blocking)
        return {}
    times = {"quantize": cuda_graph_ms(lambda: quantize_fp8(pieces, fold)),
             "chosen": cuda_graph_ms(lambda: single_pass.launch(operands, loader, values, metadata, True, True,
                                                                True))}  # fmt: skip
    plan = single_pass.planned(operands, loader, True, True, True)
    rows = []
    for described, blocking in variants(k // 8, padding, registers):
        try:
            out = compress(**blocking)
        except Exception as error:  # a variant Triton refuses (out of resources) is reported, not fatal
            rows.append({**described, "error": f"{type(error).__name__}: {str(error)[:120]}"})
            continue
        same = torch.equal(out[0], chosen[0]) and torch.equal(out[1], chosen[1]) and torch.allclose(
            out[2], chosen[2], rtol=1e-5, atol=0)  # fmt: skip
        ms = cuda_graph_ms(lambda blocking=blocking: single_pass.launch(operands, loader, values, metadata, True,
                                                                        True, True, **blocking))  # fmt: skip
        rows.append({**described, "ms": ms, "same": same})
    timed = [r for r in rows if "ms" in r and r["same"]]
    best = min(timed, key=lambda r: r["ms"])
    return {"case": name, "M": m, "K": k, "fold": fold.encode(), "quantize_ms": times["quantize"],
            "chosen_ms": times["chosen"],
            "chosen": {key: plan.arguments[key] for key in ("PAIRS", "CHUNKS", "HELD", "num_warps", "RAW_MAX")},
            "best": best,
            "chosen_over_best": times["chosen"] / best["ms"],
            "variants": rows, "not_equal": sum(1 for r in rows if "ms" in r and not r["same"]),
            "errors": sum(1 for r in rows if "error" in r)}  # fmt: skip


def main() -> None:
    torch.manual_seed(0)
    words, shard = sys.argv[1:], None
    if words[:1] == ["--compile-shard"]:
        shard, words = tuple(int(part) for part in words[1].split("/")), words[2:]
    sweeping = dict(registers=(None,) if "--uncapped" in words else REGISTERS, padding=3 if "--loose" in words else 8)
    words = [word for word in words if word not in ("--uncapped", "--loose")]
    cases = [case for case in CASES if not words or any(word in case[0] for word in words)]
    if shard is not None:
        for case in cases:
            sweep(*case, shard=shard, **sweeping)
        return
    results = []
    for case in cases:
        results.append(sweep(*case, **sweeping))
        r = results[-1]
        top = sorted((v for v in r["variants"] if "ms" in v and v["same"]), key=lambda v: v["ms"])[:6]
        print(f"\n{r['case']} (M={r['M']}, K={r['K']}, {r['fold']}): quantize {r['quantize_ms'] * 1e3:.1f} µs, "
              f"chosen {r['chosen']} {r['chosen_ms'] * 1e3:.1f} µs; {len(r['variants'])} variants, "
              f"{r['not_equal']} not equal, {r['errors']} refused", flush=True)  # fmt: skip
        for v in top:
            print(f"  {v['ms'] * 1e3:6.1f} µs  pairs {v['blocks'][1]:3} x {v['blocks'][2]:2} chunks, {v['warps']} "
                  f"warps, {'held' if v['held'] else 'read twice'}, first {v['first']}, maxnreg {v['maxnreg']}",
                  flush=True)  # fmt: skip
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    with open(os.path.join(os.environ.get("OUT", "/tmp"), "tune_fp8_compressor.json"), "w") as f:
        json.dump({**meta, "cases": results}, f, indent=1)


if __name__ == "__main__":
    main()

"""The compressor alone in the CUTLASS layout: the one-launch kernel (`prune_compress_24_single_pass`) at several
block shapes against the general two-launch kernel, on the same x (CUDA-graph replay, median; µs).

    python benchmarks/bench_compress_cutlass.py [--json out.json]     # a CUDA GPU
    python benchmarks/bench_compress_cutlass.py --shapes 4608x1152,4608x4608 --plain-only  # those rows of X alone

Block shapes are (rows a program, pairs of groups a chunk, chunks a row); the default is
the one `row_blocking.row_blocks` picks, beside chunks of 16 to 256 pairs (`row_blocking.warps`' warps).
Then FLUX's single-block output projection's x, cat(attention, GELU(MLP)) folded into the compressor: the general
kernel against the one-pass kernel at chunks of 64 and 128 pairs (the head piece whole chunks: each chunk through
its own piece's activation) and of 256 (3072 is not whole chunks of 2048: each member through both, selected);
the same for the FP8 compressor (`quantize_fp8_single_pass`, its row read twice at this K) against its general
kernels, and with the row held in registers (read once, the GELU computed once) in 4, 8 and 16 warps a program;
the same for x = GELU(t) at 4608 × 12288, as FLUX's MLP down-projections read it, Wan's GELU(t) at 14040 × 13824
and plain 4608 × 15360 and × 12288. For each, the FP8 kernel at its own blocking with the first read of a long row
taking the largest value before the activation (`RAW_MAX`, the default; its maxima two to a word, the default, or
one a member) and through it (`raw_max=False`). Last, Z-Image's SwiGLU down-projection input silu(a) · b at
4352 × 10240 (a gated fold: the general kernels only, 16-bit and FP8).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lynx_compile.folds import IDENTITY, FoldSpec, loading  # noqa: E402
from lynx_compile.kernels import prune_compress_24_single_pass as single_pass  # noqa: E402
from lynx_compile.kernels import quantize_fp8_single_pass as fp8_single_pass  # noqa: E402
from lynx_compile.kernels.e4m3 import hardware_cast  # noqa: E402
from lynx_compile.kernels.prune_quantize_fp8 import prune_quantize_compress_fp8  # noqa: E402
from lynx_compile.kernels.grid import cdiv  # noqa: E402
from lynx_compile.kernels.prune_compress_24 import metadata_bytes, prune_compress_24_cutlass  # noqa: E402
from lynx_compile.kernels.row_blocking import row_blocks  # noqa: E402
from lynx_compile.timing import cuda_graph_ms  # noqa: E402
from needs_gpu import require_cuda  # noqa: E402

SHAPES = [(4608, 3072), (4608, 12288), (4608, 15360), (14040, 5120), (1024, 3072)]
CAT_GELU, GELU = FoldSpec("concat", ("none", "gelu_tanh")), FoldSpec("activation", ("gelu_tanh",))
FOLDED_SHAPES = [(CAT_GELU, 4608, (3072, 12288)), (CAT_GELU, 1024, (3072, 12288)), (GELU, 4608, (12288,)),
                 (GELU, 14040, (13824,)), (IDENTITY, 4608, (15360,)), (IDENTITY, 4608, (12288,))]  # fmt: skip
GATED_SHAPES = [(FoldSpec("gated", ("silu",)), 4352, 10240)]  # (fold, rows, K): x = silu(a) · b, a and b M × K
HELD_WARPS = (4, 8, 16)  # FP8 rows this long held in registers (read once, GELU once) in this many warps a program
FIRST_READS = {"raw_max": dict(raw_max=True, packed=True), "raw_max_one_a_member": dict(raw_max=True, packed=False),
               "statistics_through_activation": dict(raw_max=False, packed=True)}  # fmt: skip


def variants(k: int) -> dict[str, tuple[int, int, int] | None]:
    """Block shapes that cover a row of k // 8 pairs: the default, whole rows at 1-4 a program, chunks of 16-256."""
    row_pairs = k // 8
    shapes: dict[str, tuple[int, int, int] | None] = {"default": None}
    for rows, pairs in ((1, 1024), (2, 512), (4, 512), (2, 1024)):
        if pairs >= row_pairs and rows * pairs <= 4096:
            shapes[f"rows{rows}_pairs{pairs}"] = (rows, pairs, 1)
    for pairs in (16, 32, 64, 128, 256):
        shapes[f"chunks_of_{pairs}"] = (1, pairs, cdiv(row_pairs, pairs))
    return shapes


def shapes_argument(text: str) -> list[tuple[int, int]]:
    """"4608x1152,4608x4608" -> [(4608, 1152), (4608, 4608)]."""
    return [tuple(int(size) for size in shape.split("x")) for shape in text.split(",")]


def main() -> None:
    require_cuda()
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", type=Path)
    parser.add_argument("--held-warps", default=",".join(map(str, HELD_WARPS)),
                        help="warps a program for the FP8 rows held in registers, comma-separated ('' skips them)")
    parser.add_argument("--folded-only", action="store_true", help="time only the folded and FP8 rows")
    parser.add_argument("--shapes", type=shapes_argument, default=SHAPES, help="plain X's rows: MxK,MxK,...")
    parser.add_argument("--plain-only", action="store_true", help="time only plain X (no folded, no gated rows)")
    args = parser.parse_args()
    held_warps = [int(warps) for warps in args.held_warps.split(",") if warps]
    rows_out = []
    for m, k in [] if args.folded_only else args.shapes:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        operands, loader = loading([x], IDENTITY)
        values = torch.empty(m, k // 2, device="cuda", dtype=torch.bfloat16)
        metadata = torch.empty(metadata_bytes(m, k), device="cuda", dtype=torch.uint8)
        row = {"M": m, "K": k, "default_blocks": list(row_blocks(k // 8, single_pass.PAIRS_PER_PROGRAM)),
               "general_us": 1e3 * cuda_graph_ms(lambda: prune_compress_24_cutlass(x))}  # fmt: skip
        expected = prune_compress_24_cutlass(x)
        for name, blocks in variants(k).items():
            scale = single_pass.launch(operands, loader, values, metadata, blocks=blocks)
            assert torch.equal(values.view(torch.int16), expected[0].view(torch.int16))
            assert torch.equal(metadata, expected[1]) and torch.allclose(scale, expected[2], rtol=1e-5, atol=0)
            row[f"{name}_us"] = 1e3 * cuda_graph_ms(
                lambda blocks=blocks: single_pass.launch(operands, loader, values, metadata, blocks=blocks))
        rows_out.append(row)
        print(f"{m}x{k}: " + "  ".join(f"{key[:-3]} {value:.1f}" for key, value in row.items() if key.endswith("_us")),
              flush=True)  # fmt: skip
    for folded, m, widths in [] if args.plain_only else FOLDED_SHAPES:
        inputs = [torch.randn(m, width, device="cuda", dtype=torch.bfloat16) for width in widths]
        operands, loader = loading(inputs, folded)
        k = loader.width
        values = torch.empty(m, k // 2, device="cuda", dtype=torch.bfloat16)
        metadata = torch.empty(metadata_bytes(m, k), device="cuda", dtype=torch.uint8)
        expected = prune_compress_24_cutlass(operands, loader)
        row = {"M": m, "K": k, "fold": folded.encode(),
               "general_us": 1e3 * cuda_graph_ms(lambda: prune_compress_24_cutlass(operands, loader))}  # fmt: skip
        for pairs in (64, 128, 256):
            blocks = (1, pairs, cdiv(k // 8, pairs))
            scale = single_pass.launch(operands, loader, values, metadata, blocks=blocks)
            assert torch.equal(values.view(torch.int16), expected[0].view(torch.int16))
            assert torch.equal(metadata, expected[1]) and torch.allclose(scale, expected[2], rtol=1e-5, atol=0)
            head_chunks = single_pass.planned(operands, loader, blocks=blocks).arguments["HEAD_CHUNKS"]
            row[f"chunks_of_{pairs}_head_chunks_{head_chunks}_us"] = 1e3 * cuda_graph_ms(
                lambda blocks=blocks: single_pass.launch(operands, loader, values, metadata, blocks=blocks))
        fp8_values = torch.empty(m, k // 2, device="cuda", dtype=torch.float8_e4m3fn)
        expected = prune_quantize_compress_fp8(operands, loader, single_pass=False)
        row["fp8_general_us"] = 1e3 * cuda_graph_ms(
            lambda: prune_quantize_compress_fp8(operands, loader, single_pass=False))
        for pairs in (128, 256):
            blocks, fp8 = (1, pairs, cdiv(k // 8, pairs)), (True, True, hardware_cast())
            scale = fp8_single_pass.launch(operands, loader, fp8_values, metadata, *fp8, blocks=blocks)
            assert torch.equal(fp8_values.view(torch.uint8), expected[0].view(torch.uint8))
            assert torch.equal(metadata, expected[1]) and torch.allclose(scale, expected[2], rtol=1e-5, atol=0)
            head_chunks = fp8_single_pass.planned(operands, loader, *fp8, blocks=blocks).arguments["HEAD_CHUNKS"]
            row[f"fp8_chunks_of_{pairs}_head_chunks_{head_chunks}_us"] = 1e3 * cuda_graph_ms(
                lambda blocks=blocks: fp8_single_pass.launch(operands, loader, fp8_values, metadata, *fp8,
                                                             blocks=blocks))  # fmt: skip
        for warps in held_warps:  # the whole row kept in registers: the chunks of 128 pairs read once
            blocks, held = (1, 128, cdiv(k // 8, 128)), dict(held_pairs=k // 8 + 128, num_warps=warps)
            fp8_values.zero_()
            metadata.zero_()
            scale = fp8_single_pass.launch(operands, loader, fp8_values, metadata, *fp8, blocks=blocks, **held)
            assert fp8_single_pass.planned(operands, loader, *fp8, blocks=blocks, **held).arguments["HELD"]
            assert torch.equal(fp8_values.view(torch.uint8), expected[0].view(torch.uint8))
            assert torch.equal(metadata, expected[1]) and torch.allclose(scale, expected[2], rtol=1e-5, atol=0)
            row[f"fp8_chunks_of_128_held_warps{warps}_us"] = 1e3 * cuda_graph_ms(
                lambda blocks=blocks, held=held: fp8_single_pass.launch(operands, loader, fp8_values, metadata, *fp8,
                                                                        blocks=blocks, **held))  # fmt: skip
        # the first read's largest magnitude before the activation (its maxima two to a word, or one a member), or
        # through it
        for name, first_read in FIRST_READS.items():
            fp8_values.zero_()
            metadata.zero_()
            scale = fp8_single_pass.launch(operands, loader, fp8_values, metadata, *fp8, **first_read)
            planned = fp8_single_pass.planned(operands, loader, *fp8, **first_read).arguments
            assert (planned["RAW_MAX"], planned["PACKED"]) == (first_read["raw_max"], first_read["packed"])
            assert torch.equal(fp8_values.view(torch.uint8), expected[0].view(torch.uint8))
            assert torch.equal(metadata, expected[1]) and torch.allclose(scale, expected[2], rtol=1e-5, atol=0)
            row[f"fp8_default_{name}_us"] = 1e3 * cuda_graph_ms(
                lambda first_read=first_read: fp8_single_pass.launch(operands, loader, fp8_values, metadata, *fp8,
                                                                     **first_read))  # fmt: skip
        rows_out.append(row)
        print(f"{m}x{k} {folded.encode()}: " + "  ".join(f"{key[:-3]} {value:.1f}" for key, value in row.items()
                                                         if key.endswith("_us")), flush=True)  # fmt: skip
    for folded, m, k in [] if args.plain_only else GATED_SHAPES:
        operands, loader = loading([torch.randn(m, k, device="cuda", dtype=torch.bfloat16) for _ in "ab"], folded)
        row = {"M": m, "K": k, "fold": folded.encode(),
               "general_us": 1e3 * cuda_graph_ms(lambda: prune_compress_24_cutlass(operands, loader)),
               "fp8_general_us": 1e3 * cuda_graph_ms(lambda: prune_quantize_compress_fp8(operands, loader))}
        rows_out.append(row)
        print(f"{m}x{k} {folded.encode()}: general {row['general_us']:.1f}  fp8_general {row['fp8_general_us']:.1f}",
              flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows_out}, indent=1))


if __name__ == "__main__":
    main()

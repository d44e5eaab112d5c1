"""Probe the layout of `torch._cslt_compress` on this GPU: where each kept value and each group's metadata land.

    python benchmarks/probe_cslt_layout.py     # on the GPU; writes cslt_layout.pt into $OUT (or /tmp)

cuSPARSELt's compressed operand is one buffer, values then metadata, in an undocumented, architecture-specific
order. For each probed shape (M × K, bf16 and fp16, 2:4 along K) this records:
- `values`: the values region, read back as ids: the input keeps positions 0 and 1 of every group, and kept value
  number i (row-major over kept values) carries the unique bit pattern 0x3000 + i;
- `toggles`: for every group, which metadata bytes change, and how, when that group alone keeps positions 2 and 3
  instead of 0 and 1;
- `codes`: the metadata bits and stored values of group (0, 0) for each of its 11 possible contents (6 pairs, 4
  singles, empty), to learn the encoding of a group and what cuSPARSELt does with fewer than 2 nonzeros.
"""

from __future__ import annotations

import itertools
import os

import torch

SHAPES = [(32, 64), (64, 64), (64, 128), (128, 64), (128, 128), (128, 256), (256, 64)]
PAIRS = list(itertools.combinations(range(4), 2))


def with_pattern(base_ids: torch.Tensor, keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Dense (M, K): kept value i of the row-major kept list gets bit pattern 0x3000 + i; the rest are zero."""
    m_rows, k = keep.shape
    bits = torch.zeros(m_rows, k, dtype=torch.int16, device="cuda")
    bits[keep] = (0x3000 + base_ids).to(torch.int16)
    return bits.view(dtype)


def probe(m_rows: int, k: int, dtype: torch.dtype) -> dict:
    n_values = m_rows * k // 2
    ids = torch.arange(n_values, device="cuda", dtype=torch.int32)
    keep = torch.zeros(m_rows, k // 4, 4, dtype=torch.bool, device="cuda")
    keep[..., :2] = True
    dense = with_pattern(ids, keep.reshape(m_rows, k), dtype)
    base = torch._cslt_compress(dense).flatten().view(torch.uint8)  # 2-D (M, ·) on return: read it as one blob
    values_bytes = n_values * 2
    values = base[:values_bytes].view(torch.int16).to(torch.int32) - 0x3000
    meta = base[values_bytes:]

    toggles = []
    for row in range(m_rows):
        for group in range(k // 4):
            flipped = keep.clone()
            flipped[row, group] = torch.tensor([False, False, True, True], device="cuda")
            flipped_dense = with_pattern(ids, flipped.reshape(m_rows, k), dtype)
            other = torch._cslt_compress(flipped_dense).flatten().view(torch.uint8)
            diff = (other[values_bytes:] ^ meta).nonzero().flatten()
            toggles.append([(int(i), int(meta[i] ^ other[values_bytes + i])) for i in diff])

    codes = {}
    contents = [tuple(p) for p in PAIRS] + [(i,) for i in range(4)] + [()]
    for content in contents:
        probe_keep = keep.clone()
        probe_keep[0, 0] = False
        for i in content:
            probe_keep[0, 0, i] = True
        dense_probe = with_pattern(torch.arange(int(probe_keep.sum()), device="cuda"), probe_keep.reshape(m_rows, k),
                                   dtype)  # fmt: skip
        out = torch._cslt_compress(dense_probe).flatten().view(torch.uint8)
        codes[content] = {"meta": out[values_bytes:].cpu(), "values": out[:values_bytes].view(torch.int16).cpu()}
    return {"buffer_bytes": base.numel(), "values": values.cpu(), "meta_base": meta.cpu(), "toggles": toggles,
            "codes": codes}  # fmt: skip


def main() -> None:
    results = {}
    for (m_rows, k), dtype in itertools.product(SHAPES, (torch.bfloat16, torch.float16)):
        results[(m_rows, k, str(dtype))] = probe(m_rows, k, dtype)
        r = results[(m_rows, k, str(dtype))]
        print(f"{m_rows}x{k} {dtype}: buffer {r['buffer_bytes']} B (values {m_rows * k} B), "
              f"toggle bytes/group: {sorted({len(t) for t in r['toggles']})}", flush=True)  # fmt: skip
    path = os.path.join(os.environ.get("OUT", "/tmp"), "cslt_layout.pt")
    torch.save({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "results": results}, path)
    print("wrote", path)


if __name__ == "__main__":
    main()

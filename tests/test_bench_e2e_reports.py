"""bench_e2e's summaries of a lynx report: why layers stayed dense, and which (by kind, block indices folded)."""

import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
from bench_e2e import dense_layer_kinds, dense_reasons  # noqa: E402


def layer(name, decision, reason="", tokens=4096):
    return SimpleNamespace(name=name, decision=decision, reason=reason, tokens=tokens)


REPORT = SimpleNamespace(layers=[
    layer("transformer_blocks.0.attn.to_out.0", "dense", "sparse path measured 1.01× dense < min_speedup=1.05"),
    layer("transformer_blocks.1.attn.to_out.0", "dense", "sparse path measured 1.03× dense < min_speedup=1.05"),
    layer("transformer_blocks.0.attn.to_add_out", "dense", "sparse path measured 0.97× dense < min_speedup=1.05", 512),
    layer("transformer_blocks.0.ff.net.2", "sparse"),
    layer("time_text_embed.timestep_embedder.linear_1", "dense", "tokens 1 < min_tokens=16", 1),
    layer("blocks.1.2.proj", "dense", "tokens 1 < min_tokens=16", 1),  # nested indices: both folded
])  # fmt: skip


def test_dense_layers_are_named_by_kind_with_their_first_reason():
    kinds = dense_layer_kinds(REPORT)
    assert kinds == {
        "transformer_blocks.*.attn.to_out.0": {"rows": 2, "tokens": 4096,
                                               "reason": "sparse path measured 1.01× dense < min_speedup=1.05"},
        "transformer_blocks.*.attn.to_add_out": {"rows": 1, "tokens": 512,
                                                 "reason": "sparse path measured 0.97× dense < min_speedup=1.05"},
        "time_text_embed.timestep_embedder.linear_1": {"rows": 1, "tokens": 1, "reason": "tokens 1 < min_tokens=16"},
        "blocks.*.*.proj": {"rows": 1, "tokens": 1, "reason": "tokens 1 < min_tokens=16"},
    }  # fmt: skip
    assert sum(entry["rows"] for entry in kinds.values()) == sum(dense_reasons(REPORT).values()) == 5


def test_dense_reasons_group_what_differs_only_in_numbers():
    assert dense_reasons(REPORT) == {"sparse path measured # dense < min_speedup=#": 3, "tokens 1 < min_tokens=16": 2}

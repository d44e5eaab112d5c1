"""lynx's CUTLASS operand against CUTLASS's own compressor (GPU tests): the compressors store the two members the
rank rule keeps, where they are, while CUTLASS's compressor, which sees only the pruned matrix, stores its nonzeros
(`lynx_compile.kernels.cutlass_layout`). The two must stand for the same matrix and give the GEMM the same product."""

import torch

from lynx_compile.kernels import cutlass_gemm
from lynx_compile.kernels.cutlass_layout import decompress_24_ref


def assert_same_product_as_cutlass_compressor(values: torch.Tensor, metadata: torch.Tensor, pruned: torch.Tensor,
                                              config: cutlass_gemm.GemmConfig) -> None:  # fmt: skip
    """`values` and `metadata` (lynx's operand of the pruned matrix `pruned`, 16-bit or e4m3) decompress to `pruned`
    bit for bit; CUTLASS's compressor's operand of it, read back by the same layout, to `pruned` with -0.0 as +0
    (checking the layout against the library's); and the library's GEMM of either with a random weight is the
    same, bit for bit."""
    integer = torch.int16 if pruned.element_size() == 2 else torch.uint8
    library = cutlass_gemm.library(config, pruned.dtype)
    cutlass_values, cutlass_metadata = library.compress_reference(pruned)
    assert torch.equal(decompress_24_ref(values, metadata).view(integer), pruned.view(integer))
    without_negative_zeros = torch.where(pruned.float() == 0, torch.zeros_like(pruned), pruned)
    assert torch.equal(decompress_24_ref(cutlass_values, cutlass_metadata).view(integer),
                       without_negative_zeros.view(integer))  # fmt: skip
    generator = torch.Generator(device=pruned.device).manual_seed(pruned.shape[0])
    weight = (torch.randn(264, pruned.shape[1], device=pruned.device, generator=generator)
              / pruned.shape[1] ** 0.5).to(pruned.dtype)  # fmt: skip
    ours = cutlass_gemm.sparse_mm(values, metadata, weight, None, None, config)
    theirs = cutlass_gemm.sparse_mm(cutlass_values, cutlass_metadata, weight, None, None, config)
    assert torch.equal(ours.view(torch.int16), theirs.view(torch.int16))

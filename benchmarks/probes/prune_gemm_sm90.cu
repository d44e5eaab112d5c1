// A measured probe, not part of the package (issue 12 item 7: "keep it only if it beats the separate compress pass";
// it does not, benchmarks/RESULTS.md session 18 has the numbers and why). Built and timed by
// `benchmarks/bench_prune_in_gemm.py`.
//
// A 2:4 sparse GEMM that prunes its own operand (sm_90a): the activation X is read dense, once, by TMA; each
// consumer thread ranks its groups of 4 in registers and feeds the kept pair straight to the sparse GMMA's
// register-A form, so the compressed operand is never written to memory:
//
//     Y[m, n] = cast( s[m] · (Σ_k prune24(X)[m, k] · W[n, k])  +  b[n] ),   s[m] = sqrt(‖x_m‖² / (‖x̃_m‖² + 1e-8))
//
// X: (M, K) row-major, row stride ldx elements; W: (N, K) row-major (nn.Linear's weight); b: (N,) or null. The rank
// rule is `nm_prune.py`'s, bit for bit: magnitudes compared on their bits (NaN as +inf), ties to the lower index; a
// row whose ‖x‖² is not finite gets s = 1. Energies accumulate in fp32 in the kernel's own order (the reference sums
// in torch's), so s agrees to fp32 rounding, not bit for bit.
//
// Why the layout works without exchanging data: in the m64nNk32 sparse GMMA's register-A fragment (CuTe's
// ALayout_64x32), lane l of warp w holds rows 16w + l/4 and +8, and of each 32-wide K slice the groups q = l%4 and
// q + 4, whole: every thread prunes what it feeds. Only the metadata word crosses lanes (ELayout_64x32: lane l
// carries groups 4·(l%2) … +3 of its two rows), two shuffles within the quad per slice.
//
// CTA: 128 × 256 tile, K step 64, 4 stages; warp group 0 issues the TMA loads, groups 1 and 2 each own 64 rows.
// Not persistent, no cluster.
//
//   LYNX_ELEMENT            0: bf16, 1: fp16
//   LYNX_PROBE_NO_RANKING   diagnostic: the kept pair is the group's first two members (wrong results)
//   LYNX_PROBE_NO_LOAD      diagnostic: neither the shared-memory loads nor the ranking (wrong results)

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cudaTypedefs.h>

#include <cstdint>
#include <utility>

#include "cute/arch/mma_sm90_gmma_sparse.hpp"

#ifndef LYNX_ELEMENT
#define LYNX_ELEMENT 0
#endif

namespace {

constexpr int kTileM = 128, kTileN = 256, kTileK = 64, kStages = 4;
constexpr int kThreads = 384;
constexpr int kTileBytesX = kTileM * kTileK * 2, kTileBytesW = kTileN * kTileK * 2;

namespace gmma = cute::SM90::GMMA;
#if LYNX_ELEMENT == 0
using Mma = gmma::SPARSE::GMMA_64x256x32_F32BF16BF16_RS<gmma::Major::K, gmma::Major::K>;
constexpr uint32_t kInfBits = 0x7F80;  // |x|'s bits at or above this are inf or NaN
#else
using Mma = gmma::SPARSE::GMMA_64x256x32_F32F16F16_RS<gmma::Major::K, gmma::Major::K>;
constexpr uint32_t kInfBits = 0x7C00;
#endif

struct alignas(1024) SharedStorage {
  uint8_t x[kStages][kTileBytesX];  // 128-byte swizzled (TMA), so 1024-byte aligned
  uint8_t w[kStages][kTileBytesW];
  uint64_t full[kStages];
  uint64_t empty[kStages];
};

__device__ __forceinline__ uint32_t smem_address(const void* pointer) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(pointer));
}

__device__ __forceinline__ void barrier_init(uint64_t* barrier, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_address(barrier)), "r"(count));
}

__device__ __forceinline__ void barrier_expect_bytes(uint64_t* barrier, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_address(barrier)), "r"(bytes)
               : "memory");
}

__device__ __forceinline__ void barrier_arrive(uint64_t* barrier) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_address(barrier)) : "memory");
}

__device__ __forceinline__ void barrier_wait(uint64_t* barrier, uint32_t phase) {
  asm volatile(
      "{\n"
      ".reg .pred ready;\n"
      "WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 ready, [%0], %1;\n"
      "@!ready bra WAIT;\n"
      "}\n" ::"r"(smem_address(barrier)),
      "r"(phase)
      : "memory");
}

__device__ __forceinline__ void tma_load(void* destination, const CUtensorMap* map, uint64_t* barrier, int inner,
                                         int outer) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], [%2];" ::"r"(
          smem_address(destination)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(smem_address(barrier)), "r"(inner), "r"(outer)
      : "memory");
}

// A K-major operand tile in 128-byte-swizzled shared memory, as the GMMA reads it: 8-row core matrices 1024 bytes
// apart; the leading offset is unused for swizzled K-major layouts.
__device__ __forceinline__ uint64_t smem_descriptor(uint32_t address) {
  return static_cast<uint64_t>((address & 0x3FFFF) >> 4) | (uint64_t{1} << 16) | (uint64_t{1024 >> 4} << 32) |
         (uint64_t{1} << 62);
}

__device__ __forceinline__ void keep_register(uint32_t& value) { asm volatile("" : "+r"(value)::"memory"); }
__device__ __forceinline__ void keep_register(float& value) { asm volatile("" : "+f"(value)::"memory"); }

template <size_t... I>
__device__ __forceinline__ void sparse_mma(const uint32_t (&a)[4], uint64_t descriptor_b, float (&d)[128], uint32_t e,
                                           std::index_sequence<I...>) {
  Mma::fma(a[0], a[1], a[2], a[3], descriptor_b, d[I]..., e, gmma::ScaleOut::One);
}

__device__ __forceinline__ float low_half(uint32_t pair) {
#if LYNX_ELEMENT == 0
  return __uint_as_float(pair << 16);
#else
  return __half2float(__ushort_as_half(static_cast<unsigned short>(pair & 0xFFFF)));
#endif
}

__device__ __forceinline__ float high_half(uint32_t pair) {
#if LYNX_ELEMENT == 0
  return __uint_as_float(pair & 0xFFFF0000u);
#else
  return __half2float(__ushort_as_half(static_cast<unsigned short>(pair >> 16)));
#endif
}

// The groups a thread holds in one 64-wide K step, ranked side by side (each stage over all groups before the next,
// independent work for the scheduler; 1–3% faster than ranking one group after another). Group j: x0 x1 in `low[j]`,
// x2 x3 in `high[j]`; out: the kept pair in index order and its 4-bit metadata (first index in bits 0–1).
template <int G>
__device__ __forceinline__ void prune_groups(const uint32_t (&low)[G], const uint32_t (&high)[G], uint32_t (&pair)[G],
                                             uint32_t (&nibble)[G]) {
  uint32_t f0[G], f1[G];
#pragma unroll
  for (int j = 0; j < G; ++j) {
    // The key of member i is its magnitude's bits (NaN clamped to +inf) in the upper half and 3 − i in the lower:
    // distinct keys, the larger wins, and on equal magnitudes the lower index: the reference's rank rule.
    uint32_t magnitude_low = __vminu2(low[j] & 0x7FFF7FFFu, kInfBits * 0x10001u);
    uint32_t magnitude_high = __vminu2(high[j] & 0x7FFF7FFFu, kInfBits * 0x10001u);
    uint32_t k0 = __byte_perm(magnitude_low, 3u, 0x1054), k1 = __byte_perm(magnitude_low, 2u, 0x3254);
    uint32_t k2 = __byte_perm(magnitude_high, 1u, 0x1054), k3 = __byte_perm(magnitude_high, 0u, 0x3254);
    uint32_t a = max(k0, k1), b = min(k0, k1), c = max(k2, k3), d = min(k2, k3);
    uint32_t f_first = max(a, c) & 3u, f_second = max(min(a, c), max(b, d)) & 3u;  // 3 − index of the kept two
    f0[j] = max(f_first, f_second);  // the lower index first
    f1[j] = min(f_first, f_second);
  }
#pragma unroll
  for (int j = 0; j < G; ++j) {
#if defined(LYNX_PROBE_NO_RANKING) || defined(LYNX_PROBE_NO_LOAD)  // diagnostic builds (wrong results)
    pair[j] = low[j];
    nibble[j] = 4u;
    continue;
#endif
    // Member i is bytes 2i, 2i+1 of {low, high}: the byte_perm selector 0x22·i + 0x10 = 0x76 − 0x22·(3 − i).
    pair[j] = __byte_perm(low[j], high[j], 0x7676u - 0x22u * (f0[j] + (f1[j] << 8)));
    nibble[j] = 15u - (f0[j] + (f1[j] << 2));
  }
}

// ‖x‖² and ‖x̃‖² of one group, added to `total` and `kept`.
__device__ __forceinline__ void add_energies(uint32_t low, uint32_t high, uint32_t pair, float& total, float& kept) {
  float x0 = low_half(low), x1 = high_half(low), x2 = low_half(high), x3 = high_half(high);
  total = fmaf(x0, x0, fmaf(x1, x1, fmaf(x2, x2, fmaf(x3, x3, total))));
  float p0 = low_half(pair), p1 = high_half(pair);
  kept = fmaf(p0, p0, fmaf(p1, p1, kept));
}

[[maybe_unused]] __device__ __forceinline__ uint2 load_shared_64(uint32_t address) {
  uint2 v;
  asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];" : "=r"(v.x), "=r"(v.y) : "r"(address));
  return v;
}

struct Consumer {
  float acc[128];
  uint32_t a[2][2][4];  // [buffer][K slice of 32][register]
  uint32_t e[2][2];
  float total[2][2], kept[2][2];  // [row][slice]: the thread's two rows, in two sums each for latency
  int row0;                        // the first of its rows within the CTA tile (the second is row0 + 8)
  int quad;                        // lane % 4: its groups are quad and quad + 4 of each 32-wide slice
};

// The thread's part of one 64-wide K step: load, prune and issue, into register buffer B.
template <int B>
__device__ __forceinline__ void consume_step(Consumer& c, SharedStorage& smem, int step, int lane) {
  int stage = step % kStages;
  barrier_wait(&smem.full[stage], (step / kStages) & 1);
  uint32_t x = smem_address(smem.x[stage]) + c.row0 * 128 + ((c.quad & 1) << 3);
  // Group j = 4·slice + 2·g + r: row row0 + 8r, groups quad + 4g of the slice. Its byte column is 64·slice + 32·g +
  // 8·quad; the 16-byte chunk index is XORed with row % 8 (the 128-byte swizzle; row0 + 8 has the same row % 8).
  uint32_t low[8], high[8], pair[8], nibble[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    int slice = j / 4, g = (j / 2) % 2, r = j % 2;
    int chunk = 4 * slice + 2 * g + (c.quad >> 1);
    uint32_t address = x + r * 1024 + ((chunk ^ (c.row0 & 7)) << 4);
#ifdef LYNX_PROBE_NO_LOAD  // diagnostic build: neither the loads nor the ranking (wrong results)
    uint2 v = make_uint2(address, j);
#else
    uint2 v = load_shared_64(address);
#endif
    low[j] = v.x;
    high[j] = v.y;
  }
  prune_groups(low, high, pair, nibble);
#pragma unroll
  for (int slice = 0; slice < 2; ++slice) {
#pragma unroll
    for (int i = 0; i < 4; ++i) c.a[B][slice][i] = pair[4 * slice + i];  // A registers: (r0,q) (r8,q) (r0,q+4) (r8,q+4)
    // Word 0 of the quad holds groups 0–3 of both rows, word 1 groups 4–7; lane q owns nibble q of each.
    uint32_t word0 = (nibble[4 * slice] << (4 * c.quad)) | (nibble[4 * slice + 1] << (16 + 4 * c.quad));
    uint32_t word1 = (nibble[4 * slice + 2] << (4 * c.quad)) | (nibble[4 * slice + 3] << (16 + 4 * c.quad));
    bool odd = lane & 1;
    uint32_t mine = (odd ? word1 : word0) | __shfl_xor_sync(0xFFFFFFFFu, odd ? word0 : word1, 1);
    c.e[B][slice] = mine | __shfl_xor_sync(0xFFFFFFFFu, mine, 2);
  }
#pragma unroll
  for (int j = 0; j < 8; ++j) add_energies(low[j], high[j], pair[j], c.total[j % 2][j / 4], c.kept[j % 2][j / 4]);
  uint32_t w = smem_address(smem.w[stage]);
#pragma unroll
  for (int i = 0; i < 128; ++i) keep_register(c.acc[i]);
  asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#pragma unroll
  for (int slice = 0; slice < 2; ++slice)  // K slice 32 = 64 bytes into the swizzled row: the descriptor's +4
    sparse_mma(c.a[B][slice], smem_descriptor(w) + 4 * slice, c.acc, c.e[B][slice], std::make_index_sequence<128>{});
  asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
#pragma unroll
  for (int i = 0; i < 128; ++i) keep_register(c.acc[i]);
  // The previous step's GMMAs are done after this: its registers may be reused and its stage refilled.
  asm volatile("wgmma.wait_group.sync.aligned 1;" ::: "memory");
#pragma unroll
  for (int slice = 0; slice < 2; ++slice) {
#pragma unroll
    for (int i = 0; i < 4; ++i) keep_register(c.a[1 - B][slice][i]);
    keep_register(c.e[1 - B][slice]);
  }
  if (step > 0 && lane == 0) barrier_arrive(&smem.empty[(step - 1) % kStages]);
}

__global__ void __launch_bounds__(kThreads, 1)
    prune_gemm_kernel(const __grid_constant__ CUtensorMap map_x, const __grid_constant__ CUtensorMap map_w,
                      const uint16_t* __restrict__ bias, uint16_t* __restrict__ y, int m, int n, int k) {
  extern __shared__ __align__(1024) uint8_t shared_raw[];
  SharedStorage& smem = *reinterpret_cast<SharedStorage*>(
      (reinterpret_cast<uintptr_t>(shared_raw) + 1023) & ~uintptr_t{1023});
  int group = threadIdx.x / 128, lane = threadIdx.x % 32, warp = (threadIdx.x / 32) % 4;
  int tile_m = blockIdx.x * kTileM, tile_n = blockIdx.y * kTileN;
  int steps = (k + kTileK - 1) / kTileK;

  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      barrier_init(&smem.full[s], 1);
      barrier_init(&smem.empty[s], 8);  // one arrival per consumer warp
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();

  if (group == 0) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
    if (threadIdx.x == 0) {
      for (int step = 0; step < steps; ++step) {
        int stage = step % kStages;
        if (step >= kStages) barrier_wait(&smem.empty[stage], ((step / kStages) + 1) & 1);
        barrier_expect_bytes(&smem.full[stage], kTileBytesX + kTileBytesW);
        tma_load(smem.x[stage], &map_x, &smem.full[stage], step * kTileK, tile_m);
        tma_load(smem.w[stage], &map_w, &smem.full[stage], step * kTileK, tile_n);
      }
    }
    return;
  }

  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
  Consumer c;
#pragma unroll
  for (int i = 0; i < 128; ++i) c.acc[i] = 0.0f;
#pragma unroll
  for (int i = 0; i < 4; ++i) c.total[i / 2][i % 2] = c.kept[i / 2][i % 2] = 0.0f;
  c.row0 = 64 * (group - 1) + 16 * warp + lane / 4;
  c.quad = lane % 4;
  for (int step = 0; step < steps; step += 2) {
    consume_step<0>(c, smem, step, lane);
    if (step + 1 < steps) consume_step<1>(c, smem, step + 1, lane);
  }
  asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
#pragma unroll
  for (int i = 0; i < 128; ++i) keep_register(c.acc[i]);

  float scale[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {  // the quad's four threads hold the row's eight groups of each slice
    float total = c.total[r][0] + c.total[r][1], kept = c.kept[r][0] + c.kept[r][1];
    total += __shfl_xor_sync(0xFFFFFFFFu, total, 1);
    total += __shfl_xor_sync(0xFFFFFFFFu, total, 2);
    kept += __shfl_xor_sync(0xFFFFFFFFu, kept, 1);
    kept += __shfl_xor_sync(0xFFFFFFFFu, kept, 2);
    scale[r] = isfinite(total) ? sqrtf(total / (kept + 1e-8f)) : 1.0f;
  }
  // Accumulator j·4 + {0, 1}: row row0, columns 8j + 2·quad + {0, 1}; j·4 + {2, 3}: row row0 + 8 (CLayout_64xN).
#pragma unroll
  for (int j = 0; j < 32; ++j) {
    int col = tile_n + 8 * j + 2 * c.quad;
    if (col >= n) continue;
    float b0 = 0.0f, b1 = 0.0f;
    if (bias != nullptr) {
      uint32_t pair = *reinterpret_cast<const uint32_t*>(bias + col);
      b0 = low_half(pair);
      b1 = high_half(pair);
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      int row = tile_m + c.row0 + 8 * r;
      if (row >= m) continue;
      float v0 = fmaf(c.acc[4 * j + 2 * r], scale[r], b0), v1 = fmaf(c.acc[4 * j + 2 * r + 1], scale[r], b1);
#if LYNX_ELEMENT == 0
      __nv_bfloat162 out = __floats2bfloat162_rn(v0, v1);
#else
      __half2 out = __floats2half2_rn(v0, v1);
#endif
      *reinterpret_cast<uint32_t*>(y + static_cast<size_t>(row) * n + col) = *reinterpret_cast<uint32_t*>(&out);
    }
  }
}

enum Status : int { kOk = 0, kCannotImplement = 1, kInitializeFailed = 2, kRunFailed = 3, kCudaError = 4 };

PFN_cuTensorMapEncodeTiled_v12000 encode_tiled() {
  static PFN_cuTensorMapEncodeTiled_v12000 function = [] {
    void* pointer = nullptr;
    cudaDriverEntryPointQueryResult found;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &pointer, 12000, cudaEnableDefault, &found) !=
            cudaSuccess ||
        found != cudaDriverEntryPointSuccess)
      pointer = nullptr;
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(pointer);
  }();
  return function;
}

// A (rows, k) row-major 16-bit matrix, row stride `ld` elements, loaded as box_rows × 64 tiles, 128-byte swizzled.
bool make_map(CUtensorMap* map, const void* base, int rows, int k, int ld, int box_rows) {
  auto encode = encode_tiled();
  if (encode == nullptr) return false;
  cuuint64_t sizes[2] = {static_cast<cuuint64_t>(k), static_cast<cuuint64_t>(rows)};
  cuuint64_t strides[1] = {static_cast<cuuint64_t>(ld) * 2};
  cuuint32_t box[2] = {kTileK, static_cast<cuuint32_t>(box_rows)};
  cuuint32_t element_strides[2] = {1, 1};
  return encode(map, CU_TENSOR_MAP_DATA_TYPE_UINT16, 2, const_cast<void*>(base), sizes, strides, box,
                element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

}  // namespace

extern "C" {

// Y = s ⊙ (prune24(X)·Wᵀ) + b on `stream`; `bias` may be null. X's row stride is `ldx` elements. Needs K and ldx
// multiples of 8, N even, X, W 16-byte aligned, Y and b 4-byte aligned (checked by the caller).
int lynx_prune_gemm(const void* x, int ldx, const void* weight, const void* bias, void* out, int m, int n, int k,
                    cudaStream_t stream) {
  if (m <= 0 || n <= 0 || k <= 0 || k % 8 || ldx % 8 || ldx < k || n % 2) return kCannotImplement;
  CUtensorMap map_x, map_w;
  if (!make_map(&map_x, x, m, k, ldx, kTileM) || !make_map(&map_w, weight, n, k, k, kTileN)) return kInitializeFailed;
  static bool attribute_set = false;  // the primary context's attribute; setting it twice is harmless
  int shared_bytes = static_cast<int>(sizeof(SharedStorage)) + 1024;
  if (!attribute_set) {
    if (cudaFuncSetAttribute(prune_gemm_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, shared_bytes) !=
        cudaSuccess)
      return kInitializeFailed;
    attribute_set = true;
  }
  dim3 grid((m + kTileM - 1) / kTileM, (n + kTileN - 1) / kTileN);
  prune_gemm_kernel<<<grid, kThreads, shared_bytes, stream>>>(map_x, map_w, static_cast<const uint16_t*>(bias),
                                                              static_cast<uint16_t*>(out), m, n, k);
  return cudaPeekAtLastError() == cudaSuccess ? kOk : kCudaError;
}

}  // extern "C"

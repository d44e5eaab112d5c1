// lynx's 2:4 sparse GEMM for sm_90a, on CUTLASS 3.x's warp-specialized sparse collective:
//
//     Y[m, n] = cast( s[m] · (Σ_k X̃[m, k] · W[n, k]) · w[n]  +  b[n] )
//
// X̃: the 2:4-pruned activation as CUTLASS's sparse A: values row-major M × K/2 (the two kept entries of each group
// of 4, in order) and metadata E in CUTLASS's reordered layout (`cutlass_layout.py` writes and documents it). W: the
// weight as nn.Linear stores it, (N, K) row-major = B column-major. s: per-token fp32 scale (the norm scale; for FP8
// also the activation's quantization scale), w: per-output-feature fp32 scale (FP8 weights' scale), b: bias; each
// may be null (s, w read as 1, b as 0). The epilogue visitor tree applies them in fp32 and rounds once, so Y is
// written once. fp32 accumulation (FP8: CUTLASS's fast accumulation, as torch._scaled_mm's use_fast_accum).
//
// One shared library per configuration: the tile, cluster, schedule and element type are compile-time (-D below);
// raster order and swizzle are run-time. The entry points are plain C, so the library needs no torch headers and
// one build serves every torch version; the caller passes raw pointers and the stream.
//
//   LYNX_ELEMENT       0: bf16, 1: fp16, 2: e4m3 (output bf16)     LYNX_TILE_M/N/K    CTA tile (K: logical elements)
//   LYNX_CLUSTER_M/N   CTAs per cluster                             LYNX_PINGPONG      0: cooperative, 1: ping-pong
//   LYNX_STREAMK       0: one CTA a tile (persistent), 1: stream-K (cooperative only; see TileScheduler)

#include <cuda_runtime.h>

#include <atomic>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/kernel_hardware_info.h"
#include "cutlass/transform/device/transform_universal_adapter.hpp"
#include "cutlass/transform/kernel/sparse_gemm_compressor.hpp"
#include "cutlass/util/packed_stride.hpp"

#ifndef LYNX_ELEMENT
#define LYNX_ELEMENT 0
#endif
#ifndef LYNX_TILE_M
#define LYNX_TILE_M 128
#endif
#ifndef LYNX_TILE_N
#define LYNX_TILE_N 256
#endif
#ifndef LYNX_TILE_K
#define LYNX_TILE_K 64
#endif
#ifndef LYNX_CLUSTER_M
#define LYNX_CLUSTER_M 2
#endif
#ifndef LYNX_CLUSTER_N
#define LYNX_CLUSTER_N 1
#endif
#ifndef LYNX_PINGPONG
#define LYNX_PINGPONG 0
#endif
#ifndef LYNX_STREAMK
#define LYNX_STREAMK 0
#endif

namespace {

using namespace cute;

constexpr bool kFp8 = LYNX_ELEMENT == 2;
using Element = cute::conditional_t<kFp8, cutlass::float_e4m3_t,
                                    cute::conditional_t<LYNX_ELEMENT == 1, cutlass::half_t, cutlass::bfloat16_t>>;
using ElementOut = cute::conditional_t<kFp8, cutlass::bfloat16_t, Element>;
using Accumulator = float;
constexpr int kAlignment = 128 / cutlass::sizeof_bits<Element>::value;  // 16-byte TMA rows
constexpr int kAlignmentOut = 128 / cutlass::sizeof_bits<ElementOut>::value;

using TileShape = Shape<Int<LYNX_TILE_M>, Int<LYNX_TILE_N>, Int<LYNX_TILE_K>>;
using ClusterShape = Shape<Int<LYNX_CLUSTER_M>, Int<LYNX_CLUSTER_N>, _1>;
using KernelSchedule = cute::conditional_t<
    kFp8,
    cute::conditional_t<LYNX_PINGPONG, cutlass::gemm::KernelTmaWarpSpecializedPingpongFP8FastAccum,
                        cutlass::gemm::KernelTmaWarpSpecializedCooperativeFP8FastAccum>,
    cute::conditional_t<LYNX_PINGPONG, cutlass::gemm::KernelTmaWarpSpecializedPingpong,
                        cutlass::gemm::KernelTmaWarpSpecializedCooperative>>;
using EpilogueSchedule = cute::conditional_t<LYNX_PINGPONG, cutlass::epilogue::TmaWarpSpecialized,
                                             cutlass::epilogue::TmaWarpSpecializedCooperative>;

// s[m] · (acc · w[n]) + b[n], in fp32, rounded once to the output type. A null s or w reads as 1, a null b as 0
// (the broadcast nodes' null_default), so one kernel serves layers with and without each.
using namespace cutlass::epilogue::fusion;
using RowScale = Sm90ColBroadcast<0, TileShape, float, float, Stride<_1, _0, int64_t>, 1>;
using ColumnScale = Sm90RowBroadcast<0, TileShape, float, float, Stride<_0, _1, int64_t>, 4>;
using Bias = Sm90RowBroadcast<0, TileShape, ElementOut, float, Stride<_0, _1, int64_t>, kAlignmentOut>;
using ScaledAccumulator = Sm90EVT<Sm90Compute<cutlass::multiplies, float, float,
                                              cutlass::FloatRoundStyle::round_to_nearest>,
                                  Sm90AccFetch, ColumnScale>;
using Epilogue = Sm90EVT<Sm90Compute<cutlass::homogeneous_multiply_add, ElementOut, float,
                                     cutlass::FloatRoundStyle::round_to_nearest>,
                         RowScale, ScaledAccumulator, Bias>;

using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassSparseTensorOp, TileShape, ClusterShape,
    cutlass::epilogue::collective::EpilogueTileAuto, Accumulator, float,
    void, cutlass::layout::RowMajor, kAlignmentOut,         // no C operand
    ElementOut, cutlass::layout::RowMajor, kAlignmentOut,   // D = Y, row-major M × N
    EpilogueSchedule, Epilogue>::CollectiveOp;

using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassSparseTensorOp,
    Element, cutlass::layout::RowMajor, 2 * kAlignment,   // sparse A = X̃ (logical alignment: 16 bytes compressed)
    Element, cutlass::layout::ColumnMajor, kAlignment,    // B = Wᵀ: W (N, K) row-major
    Accumulator, TileShape, ClusterShape,
    cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
        sizeof(typename CollectiveEpilogue::SharedStorage))>,
    KernelSchedule>::CollectiveOp;

// Stream-K: where the output tiles do not fill the last wave (FLUX's N = 3072 at 4608 tokens: 432 tiles of 128 × 256
// on 132 SMs, 3.3 waves), CUTLASS's heuristic splits the last tiles' K loops over the idle CTAs and adds their fp32
// partial sums through a workspace, in a fixed order (deterministic reduction); otherwise one CTA a tile.
static_assert(!(LYNX_STREAMK && LYNX_PINGPONG), "stream-K needs the cooperative schedule");
using TileScheduler = cute::conditional_t<LYNX_STREAMK, cutlass::gemm::StreamKScheduler, void>;
using GemmKernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, CollectiveMainloop,
                                                        CollectiveEpilogue, TileScheduler>;
using Gemm = cutlass::gemm::device::GemmUniversalAdapter<GemmKernel>;
using SparseConfig = typename CollectiveMainloop::SparseConfig;
using RasterOrder = cutlass::gemm::kernel::detail::RasterOrderOptions;

// CUTLASS's own compressor for this kernel's operand: the reference the Triton compressor is bit-exact with (tests).
using Compressor = cutlass::transform::device::TransformUniversalAdapter<
    cutlass::transform::kernel::StructuredSparseCompressor<Shape<int, int, int, int>, Element,
                                                           cutlass::layout::RowMajor, SparseConfig,
                                                           cutlass::arch::Sm90>>;

enum Status : int {
  kOk = 0,
  kCannotImplement = 1,
  kInitializeFailed = 2,
  kRunFailed = 3,
  kCudaError = 4,
};

int sm_count(int device) {
  // Asked once per device: the query costs microseconds, a call's whole host budget is tens.
  static int counts[64] = {0};
  if (device < 0 || device >= 64) return cutlass::KernelHardwareInfo::query_device_multiprocessor_count(device);
  if (counts[device] == 0) counts[device] = cutlass::KernelHardwareInfo::query_device_multiprocessor_count(device);
  return counts[device];
}

// The adapter's initialize() raises the kernel's dynamic shared memory to what it needs (cudaFuncSetAttribute): an
// attribute of the device's primary context (the one torch uses), so it is done once per device, by a first
// initialize(). Threads may race to it: both set the same attribute, which is harmless.
template <typename Arguments>
bool shared_memory_set(int device, Arguments const& arguments, void* workspace, cudaStream_t stream) {
  static std::atomic<bool> set[64] = {};
  bool known = device >= 0 && device < 64;
  if (known && set[device].load(std::memory_order_acquire)) return true;
  Gemm gemm;
  if (gemm.initialize(arguments, workspace, stream) != cutlass::Status::kSuccess) return false;
  if (known) set[device].store(true, std::memory_order_release);
  return true;
}

typename Gemm::Arguments make_arguments(const void* values, const void* metadata, const void* weight,
                                        const float* scale, const float* column_scale, const void* bias, void* out,
                                        int m, int n, int k, int raster, int swizzle, int device) {
  auto problem = make_tuple(m, n, k, 1);
  auto stride_b = cutlass::make_cute_packed_stride(typename GemmKernel::StrideB{}, make_shape(n, k, 1));
  auto stride_d = cutlass::make_cute_packed_stride(typename GemmKernel::StrideD{}, make_shape(m, n, 1));
  typename Gemm::Arguments arguments{
      cutlass::gemm::GemmUniversalMode::kGemm,
      problem,
      {static_cast<const Element*>(values), SparseConfig::fill_layoutA(problem), static_cast<const Element*>(weight),
       stride_b, static_cast<const typename CollectiveMainloop::ElementE*>(metadata),
       SparseConfig::fill_layoutE(problem)},
      {{}, nullptr, stride_d, static_cast<ElementOut*>(out), stride_d}};
  auto& fusion = arguments.epilogue.thread;
  fusion.op_0 = {scale, 1.0f, {}};                                          // s[m], or 1
  fusion.op_1.op_1 = {column_scale, 1.0f, {}};                              // w[n], or 1
  fusion.op_2 = {static_cast<const ElementOut*>(bias), ElementOut(0), {}};  // b[n], or 0
  arguments.hw_info.device_id = device;
  arguments.hw_info.sm_count = sm_count(device);
  arguments.scheduler.raster_order = raster == 1 ? RasterOrder::AlongM : raster == 2 ? RasterOrder::AlongN
                                                                                       : RasterOrder::Heuristic;
  arguments.scheduler.max_swizzle_size = swizzle;
  return arguments;
}

}  // namespace

extern "C" {

// Bytes of device workspace `lynx_sparse_gemm` needs for this problem, raster order and swizzle (0 without
// stream-K; with it, the partial sums' and their barriers', which depend on how the tiles are laid out).
size_t lynx_sparse_gemm_workspace(int m, int n, int k, int raster, int swizzle) {
  int device = 0;
  cudaGetDevice(&device);
  auto arguments = make_arguments(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, m, n, k, raster,
                                  swizzle, device);
  return Gemm::get_workspace_size(arguments);
}

// Y = s ⊙ (X̃·Wᵀ) ⊙ w + b on `stream`. `scale`, `column_scale` and `bias` may be null. `raster`: 0 heuristic,
// 1 along M, 2 along N.
int lynx_sparse_gemm(const void* values, const void* metadata, const void* weight, const float* scale,
                     const float* column_scale, const void* bias, void* out, int m, int n, int k, void* workspace,
                     int raster, int swizzle, cudaStream_t stream) {
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return kCudaError;
  auto arguments = make_arguments(values, metadata, weight, scale, column_scale, bias, out, m, n, k, raster, swizzle,
                                  device);
  if (Gemm::can_implement(arguments) != cutlass::Status::kSuccess) return kCannotImplement;
  // What the adapter's initialize() does, less its cudaFuncSetAttribute on every call: the kernel's shared-memory
  // size is set once per device (host time is the budget without CUDA graphs: tens of µs for the whole layer).
  if (!shared_memory_set(device, arguments, workspace, stream)) return kInitializeFailed;
  if (GemmKernel::initialize_workspace(arguments, workspace, stream) != cutlass::Status::kSuccess)
    return kInitializeFailed;
  auto params = GemmKernel::to_underlying_arguments(arguments, workspace);
  if (Gemm::run(params, stream) != cutlass::Status::kSuccess) return kRunFailed;
  return cudaPeekAtLastError() == cudaSuccess ? kOk : kCudaError;
}

// CUTLASS's compressor: an already 2:4 dense (M, K) row-major matrix → values (M × K/2) and metadata, on `stream`.
int lynx_sparse_gemm_compress_reference(const void* dense, void* values, void* metadata, int m, int k,
                                        cudaStream_t stream) {
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return kCudaError;
  auto problem = make_tuple(m, 1, k, 1);
  auto stride = cutlass::make_cute_packed_stride(cutlass::gemm::TagToStrideA_t<cutlass::layout::RowMajor>{},
                                                 make_shape(m, k, 1));
  cutlass::KernelHardwareInfo hw_info;
  hw_info.device_id = device;
  hw_info.sm_count = sm_count(device);
  typename Compressor::Arguments arguments{problem, {dense, stride, values, metadata}, {hw_info}};
  Compressor compressor;  // its reported workspace is a host compressor's; the device kernel reads none
  if (compressor.can_implement(arguments) != cutlass::Status::kSuccess) return kCannotImplement;
  if (compressor.initialize(arguments, nullptr, stream) != cutlass::Status::kSuccess) return kInitializeFailed;
  if (compressor.run(stream) != cutlass::Status::kSuccess) return kRunFailed;
  return cudaPeekAtLastError() == cudaSuccess ? kOk : kCudaError;
}

// The configuration this library was built with, and the metadata layout it reads: [element, tile M, N, K,
// cluster M, N, ping-pong, metadata atom rows, atom K (logical), logical elements of E per byte, stream-K].
void lynx_sparse_gemm_info(int* info) {
  int values[] = {LYNX_ELEMENT, LYNX_TILE_M, LYNX_TILE_N, LYNX_TILE_K, LYNX_CLUSTER_M, LYNX_CLUSTER_N,
                  LYNX_PINGPONG, int(typename SparseConfig::TensorEAtomM{}), int(typename SparseConfig::TensorEAtomK{}),
                  int(typename SparseConfig::ElementEMmaSparsity{}), LYNX_STREAMK};
  for (int i = 0; i < int(sizeof(values) / sizeof(values[0])); ++i) info[i] = values[i];
}

// Where the kernel reads the metadata of logical element (row, col) of an M × K operand: its offset in logical
// elements of E (host-only; the tests check the Python encoder against it).
long long lynx_sparse_gemm_metadata_offset(int m, int k, int row, int col) {
  auto layout = SparseConfig::fill_layoutE(make_tuple(m, 1, k, 1));
  return static_cast<long long>(layout(row, col, 0));
}

}  // extern "C"

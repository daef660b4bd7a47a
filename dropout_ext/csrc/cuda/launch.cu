// CUDA launches of a pass on the current stream, and (key, base) from the CUDA generator.
// The kernels are in flat_kernel.cuh and tile_kernel.cuh; which one runs a pass, with which
// template arguments, is decided in dispatch.h.
//
// The product compiles this file with the flat kernel's configuration fixed at compile time
// (dispatch.h, FixedTuning). The testing module compiles it a second time
// (../testing/launch_tunable.cu), under its own namespace (../ns.h) and with
// DX_CUDA_TUNING naming the knobs that its `set_cuda_tuning` op switches.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <c10/cuda/CUDAException.h>

#include <mutex>

#include "../launch.h"
#include "device_ctx.cuh"
#include "dispatch.h"
#include "flat_kernel.cuh"
#include "tile_kernel.cuh"

// The flat kernel's configuration (dispatch.h): an expression of a Tuning type.
#ifndef DX_CUDA_TUNING
#define DX_CUDA_TUNING ::dropout_ext::cuda::FixedTuning()
#endif

// The __global__ wrappers and the launcher live in the module's namespace (../ns.h), so that
// the testing module's copies are told apart from the product's in ptxas and profiler
// output (dropout_ext_testing::cuda::...); the kernel bodies and the dispatch are the ones
// of dropout_ext::cuda.
namespace DX_NS {
namespace cuda {
using namespace ::dropout_ext::cuda;
namespace {

__global__ void rng_kernel(const PassArgs a) { resolve_mask(DeviceCtx(), a); }

template <typename T, Op OP, bool FROM_BITS, int UNROLL, bool PIPE, int MODE>
__global__ void __launch_bounds__(kThreads) flat_kernel(const PassArgs a, const FlatPlan p) {
  flat_body<T, OP, FROM_BITS, UNROLL, PIPE, MODE>(DeviceCtx(), a, p);
}

template <typename T, Op OP>
__global__ void __launch_bounds__(kThreads) tile_kernel(const PassArgs a, const TilePlan t) {
  __shared__ TileShared sh;
  tile_body<T, OP>(DeviceCtx(), a, t, sh);
}

struct CudaLauncher {
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  template <typename T, Op OP, bool FROM_BITS, int UNROLL, bool PIPE, int MODE>
  void flat(int64_t blocks, const PassArgs& a, const FlatPlan& p) {
    flat_kernel<T, OP, FROM_BITS, UNROLL, PIPE, MODE><<<blocks, kThreads, 0, stream>>>(a, p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  // Persistent: as many blocks as the device holds at once (occupancy of this kernel,
  // asked once per kernel, times the multiprocessors).
  template <typename T, Op OP, bool FROM_BITS, int UNROLL, bool PIPE, int MODE>
  int64_t max_blocks(bool persistent) {
    if (!persistent) return int64_t(1) << 30;
    const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
    static const int per_sm = [prop] {
      int n = 0;
      if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, flat_kernel<T, OP, FROM_BITS, UNROLL, PIPE, MODE>, kThreads,
                                                        0) != cudaSuccess) {
        (void)cudaGetLastError();  // a query only: fall back to the thread limit
        n = prop->maxThreadsPerMultiProcessor / kThreads;
      }
      return std::max(n, 1);
    }();
    return int64_t(per_sm) * prop->multiProcessorCount;
  }
  template <typename T, Op OP>
  void tile(int64_t blocks, const PassArgs& a, const TilePlan& t) {
    tile_kernel<T, OP><<<blocks, kThreads, 0, stream>>>(a, t);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  void zero(uint8_t* bits, int64_t bytes) { C10_CUDA_CHECK(cudaMemsetAsync(bits, 0, bytes, stream)); }
};

}  // namespace
}  // namespace cuda


void cuda_run_pass(PassArgs& a) {
  if (a.g.numel == 0) {
    // nothing to compute, but the (key, base) this call drew is still owed to rng_out
    if (a.rng_out) {
      ::DX_NS::cuda::rng_kernel<<<1, 1, 0, at::cuda::getCurrentCUDAStream()>>>(a);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    return;
  }
  ::DX_NS::cuda::CudaLauncher l;
  ::dropout_ext::cuda::run_pass(l, a, DX_CUDA_TUNING);
}

bool cuda_try_channel_pass(PassArgs& a) {
  ::DX_NS::cuda::CudaLauncher l;
  return ::dropout_ext::cuda::try_channel_pass(l, a, DX_CUDA_TUNING);
}

void cuda_draw_rng(const std::optional<at::Generator>& gen, const at::Device& device, PassArgs& a) {
  auto* g = at::get_generator_or_default<at::CUDAGeneratorImpl>(
      gen, at::cuda::detail::getDefaultCUDAGenerator(device.has_index() ? device.index() : c10::cuda::current_device()));
  at::PhiloxCudaState st;
  {
    std::lock_guard<std::mutex> lock(g->mutex_);
    st = g->philox_cuda_state(4);
  }
  if (st.captured_) {
    a.rng.key_ptr = st.seed_.ptr;
    a.rng.base_ptr = st.offset_.ptr;
    a.rng.base_add = static_cast<uint64_t>(st.offset_intragraph_);
    a.rng.base_xor = kCudaBaseTag;
  } else {
    a.mask.key = st.seed_.val;
    a.mask.base = st.offset_.val ^ kCudaBaseTag;
  }
}

}  // namespace DX_NS

// CUDA launches of the fused dropout + add + norm kernels (norm_kernel.cuh) on the current
// stream: the plan and dtype dispatch are norm_plan.h's, shared with the emulator
// (../testing/norm_emulation.cpp). The ops (../ops.cpp) check the operands, allocate the
// outputs (bits_out zeroed: rows are not byte-aligned, the kernels OR their bits in), draw
// (key, base) and set the device.
//
// The grid is persistent: as many blocks as the device holds at once (the kernel's
// occupancy with its block size and shared memory), looping over rows, so that the
// backward's column sums are summed over many rows per block before they leave it (one
// slot of partial sums per block, added up in order by the column-sum kernel).
// Shared memory above the default 48 KB is opted into per kernel and device, up to
// kNormSmemBudget or the device's limit.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>

#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include "../launch.h"
#include "device_ctx.cuh"
#include "norm_plan.h"

// The arguments are __grid_constant__: read in place from the constant bank (RowMap's arrays
// are indexed at run time, which made nvcc copy the whole struct to local memory).
// The __global__ wrappers and the launcher live in the module's namespace (../ns.h), like
// launch.cu's, so that the testing module's copies (../testing/norm_launch.cu) are told
// apart in ptxas and profiler output.
namespace DX_NS {
namespace cuda {
using namespace ::dropout_ext::cuda;
namespace {

template <typename T, typename TH>
__global__ void __launch_bounds__(norm_max_threads(sizeof(at::opmath_type<T>)))
    norm_fwd_kernel(const __grid_constant__ NormArgs a, const __grid_constant__ NormPlan p) {
  extern __shared__ __align__(64) unsigned char norm_smem[];
  norm_fwd_body<T, TH>(DeviceCtx(), a, p, norm_smem);
}

template <typename T, typename TH>
__global__ void __launch_bounds__(norm_max_threads(sizeof(at::opmath_type<T>)))
    norm_bwd_kernel(const __grid_constant__ NormArgs a, const __grid_constant__ NormPlan p,
                    at::opmath_type<T>* partials) {
  extern __shared__ __align__(64) unsigned char norm_smem[];
  norm_bwd_body<T, TH>(DeviceCtx(), a, p, norm_smem, partials);
}

template <typename A>
__global__ void __launch_bounds__(kColsumThreads)
    norm_colsum_kernel(const __grid_constant__ NormArgs a, const __grid_constant__ NormPlan p, const A* partials) {
  __shared__ A red[kColsumThreads];
  norm_colsum_body<A>(DeviceCtx(), a, p, partials, red);
}

__global__ void norm_rng_kernel(const NormArgs a) { resolve_mask(DeviceCtx(), a); }

// Resident blocks per multiprocessor of `kernel` at (threads, smem), asked once per
// device, kernel and configuration; the kernel's shared memory limit is raised to `budget`
// the first time the device sees it.
template <class K>
int resident_per_sm(K kernel, int threads, int64_t smem, int64_t budget) {
  static std::mutex m;
  static std::map<std::tuple<int, const void*, int, int64_t>, int> known;
  const int dev = c10::cuda::current_device();
  const void* key = reinterpret_cast<const void*>(kernel);
  std::lock_guard<std::mutex> lock(m);
  auto it = known.find({dev, key, threads, smem});
  if (it != known.end()) return it->second;
  if (budget > 48 * 1024 && known.find({dev, key, 0, 0}) == known.end()) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(budget)));
    known[{dev, key, 0, 0}] = 0;
  }
  int n = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, threads, static_cast<size_t>(smem)) != cudaSuccess) {
    (void)cudaGetLastError();  // a query only: fall back to the thread limit
    n = at::cuda::getCurrentDeviceProperties()->maxThreadsPerMultiProcessor / threads;
  }
  n = std::max(n, 1);
  known[{dev, key, threads, smem}] = n;
  return n;
}

struct NormCudaLauncher {
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  std::vector<at::Tensor> scratches;  // freed after the launches are queued: stream-ordered reuse

  int64_t smem_budget() const {
    return std::min<int64_t>(kNormSmemBudget, static_cast<int64_t>(prop->sharedMemPerBlockOptin));
  }
  template <typename T, typename TH, bool BWD>
  int64_t max_blocks(const NormPlan& p) {
    const int n = BWD ? resident_per_sm(norm_bwd_kernel<T, TH>, p.threads, p.smem, smem_budget())
                      : resident_per_sm(norm_fwd_kernel<T, TH>, p.threads, p.smem, smem_budget());
    return int64_t(n) * prop->multiProcessorCount;
  }
  template <typename T, typename TH>
  void fwd(int64_t blocks, const NormArgs& a, const NormPlan& p) {
    norm_fwd_kernel<T, TH><<<blocks, p.threads, p.smem, stream>>>(a, p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  template <typename T, typename TH>
  void bwd(int64_t blocks, const NormArgs& a, const NormPlan& p, at::opmath_type<T>* partials) {
    norm_bwd_kernel<T, TH><<<blocks, p.threads, p.smem, stream>>>(a, p, partials);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  template <typename A>
  void colsum(int64_t blocks, const NormArgs& a, const NormPlan& p, const A* partials) {
    norm_colsum_kernel<A><<<blocks, kColsumThreads, 0, stream>>>(a, p, partials);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  template <typename A>
  A* scratch(int64_t elems) {
    const auto dtype = sizeof(A) == 8 ? at::kDouble : at::kFloat;
    scratches.push_back(at::empty({elems}, at::TensorOptions().dtype(dtype).device(at::kCUDA, c10::cuda::current_device())));
    return static_cast<A*>(scratches.back().data_ptr());
  }
  void bits_out_ready(uint8_t*, int64_t) {}  // the ops zero it on CUDA (see the top)
  void rng(const NormArgs& a) {
    norm_rng_kernel<<<1, 1, 0, stream>>>(a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

}  // namespace
}  // namespace cuda

void cuda_norm_forward(NormArgs& a) {
  ::DX_NS::cuda::NormCudaLauncher l;
  ::dropout_ext::cuda::run_norm<::DX_NS::cuda::NormCudaLauncher, false>(l, a);
}

void cuda_norm_backward(NormArgs& a) {
  ::DX_NS::cuda::NormCudaLauncher l;
  ::dropout_ext::cuda::run_norm<::DX_NS::cuda::NormCudaLauncher, true>(l, a);
}

}  // namespace DX_NS

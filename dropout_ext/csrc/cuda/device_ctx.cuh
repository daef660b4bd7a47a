// What a kernel body takes from the hardware on the GPU (kernel_common.cuh): the context of
// the __global__ wrappers of launch.cu and norm_launch.cu. The emulator's counterpart is
// ../testing/emulator.h (HostCtx).
#pragma once

#include "kernel_common.cuh"

namespace dropout_ext {
namespace cuda {

struct DeviceCtx {
  __device__ __forceinline__ int tid() const { return threadIdx.x; }
  __device__ __forceinline__ int64_t bid() const { return blockIdx.x; }
  __device__ __forceinline__ int64_t nblocks() const { return gridDim.x; }
  __device__ __forceinline__ void sync() const { __syncthreads(); }
  // Every lane of the warp calls it (norm_kernel.cuh, group_sum).
  template <typename V>
  __device__ __forceinline__ V shfl_xor(V v, int mask) const {
    return __shfl_xor_sync(0xFFFFFFFFu, v, mask);
  }
  __device__ __forceinline__ void atomic_or(unsigned int* w, unsigned int v) const { atomicOr(w, v); }
  template <typename T>
  __device__ __forceinline__ Unit<T> load_unit(const T* p) const {
    return *reinterpret_cast<const Unit<T>*>(p);
  }
  __device__ __forceinline__ Words load_words(const void* p) const { return *reinterpret_cast<const Words*>(p); }
  template <typename T>
  __device__ __forceinline__ void store_unit(T* p, const Unit<T>& v) const {
    *reinterpret_cast<Unit<T>*>(p) = v;
  }
};

}  // namespace cuda
}  // namespace dropout_ext

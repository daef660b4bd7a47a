// What one pass over the data computes, shared by the CPU and CUDA kernels.
//
// Per element, with keep from Philox (the mask word of index.h) or from packed bits,
// f = keep ? scale : 0 and s = keep ? keep_shift : drop_shift (philox.h):
//   Dropout          out = x * f                 (a dropped element is x * 0: NaN stays NaN)
//   DropoutAdd       out = residual + x * f
//   BiasDropoutAdd   out = residual + (x + bias) * f
//   Alpha            out = x * f + s
//   MaskOnly         no data: only the keep bits are written (channel-wise masks)
// 16-bit types compute in float32 and round once at the store.
#pragma once

#include <cstdint>

#include "index.h"
#include "philox.h"

namespace dropout_ext {

enum class Op : int { Dropout = 0, DropoutAdd = 1, BiasDropoutAdd = 2, Alpha = 3, MaskOnly = 4 };

enum class DType : int { Float16 = 0, BFloat16 = 1, Float32 = 2, Float64 = 3 };

// Where (key, base) come from when a kernel runs. By value, or (CUDA) read from device
// memory when the kernel runs: an rng tensor on the GPU, or the CUDA generator's Philox
// state under graph capture (key_ptr = seed, base_ptr = offset, plus base_add), so that
// every replay of a captured graph draws a fresh mask.
struct RngSource {
  const int64_t* key_ptr = nullptr;
  const int64_t* base_ptr = nullptr;
  uint64_t base_add = 0;
  uint64_t base_xor = 0;  // base = (*base_ptr + base_add) ^ base_xor
};

// The CUDA generator's Philox state (seed, offset) gives key = seed and base = offset with
// the top bit set. torch's own CUDA random kernels draw curand Philox words at counters
// (offset / 4 + n, thread index) under the same key; base >= 2**63 keeps this package's
// counters (j, base) apart from every counter those kernels use.
constexpr uint64_t kCudaBaseTag = uint64_t(1) << 63;

struct PassArgs {
  Op op = Op::Dropout;
  DType dtype = DType::Float32;
  Geometry g;
  const void* x = nullptr;
  const void* residual = nullptr;
  const void* bias = nullptr;
  void* out = nullptr;
  // Packed keep bits, bit (b % 8) of byte b / 8 for bit index b (index.h). bits_in set:
  // keep is read from it instead of drawn; bits_out set: the drawn keep bits are written.
  const uint8_t* bits_in = nullptr;
  uint8_t* bits_out = nullptr;
  int64_t nbits = 0;  // bits in bits_in / bits_out
  MaskParams mask;
  RngSource rng;
  int64_t* rng_out = nullptr;  // CUDA: the resolved (key, base) is written here when set
};

}  // namespace dropout_ext

// What one pass over the data computes, shared by the CPU and CUDA kernels.
//
// Per element i (row-major index), with f = keep ? scale : 0 (a dropped element is x * 0,
// so NaN stays NaN and -x gives -0.0):
//   Dropout          out = x * f
//   DropoutAdd       out = residual + x * f
//   BiasDropoutAdd   out = residual + (x + bias[i % bias_len]) * f
// 16-bit types compute in float32 and round once at the store.
#pragma once

#include <cstdint>

#include "philox.h"

namespace dropout_ext {

enum class Op : int { Dropout = 0, DropoutAdd = 1, BiasDropoutAdd = 2 };

enum class DType : int { Float16 = 0, BFloat16 = 1, Float32 = 2, Float64 = 3 };

struct PassArgs {
  Op op = Op::Dropout;
  int64_t numel = 0;
  const void* x = nullptr;
  const void* residual = nullptr;
  const void* bias = nullptr;
  int64_t bias_len = 1;
  void* out = nullptr;
  // keep bits, bit (i % 8) of byte i / 8 for mask word i. bits_in set: the mask is read
  // from it instead of drawn; bits_out set: the drawn mask is also written to it.
  const uint8_t* bits_in = nullptr;
  uint8_t* bits_out = nullptr;
  // Elements per mask word: 1 for element-wise dropout, the spatial size for channel
  // dropout, numel / N for drop_path. Element i uses word i / group.
  int64_t group = 1;
  MaskParams mask;
  // CPU kernels: the element type (the CUDA kernels are templates on it).
  DType dtype = DType::Float32;
  // CUDA kernels: (key, base) in device memory, read by the kernel (null: mask.key and
  // mask.base hold them), and whether every pointer allows vector loads and stores.
  const int64_t* rng = nullptr;
  bool vec = false;
};

}  // namespace dropout_ext

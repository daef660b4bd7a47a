// Raw CPU kernels of the fused dropout + add + norm ops (../norm_args.h): pointers and
// sizes only, no ATen types, like kernels.h. The launcher (norm_launch.cpp) splits the
// rows into chunks (first rows r with r * hidden % 8 == 0, so that no two chunks write one
// byte of the bit mask) and runs each chunk on one thread with the functions here.
#pragma once

#include <cstdint>

#include "../norm_args.h"
#include "kernels.h"

namespace dropout_ext {
namespace cpu {

// What the launcher prepares once per call: the (hidden,) parameters in the accumulation
// type (double for float64, else float; null when absent), each padded with zeros to
// hidden + kNormPad elements so that whole vectors can be loaded at a row's tail.
constexpr int64_t kNormPad = 64;
struct NormParams {
  const void* weight = nullptr;
  const void* bias = nullptr;        // null for RMSNorm
  const void* input_bias = nullptr;
};

// Forward over rows [r0, r1): `row` is scratch of hidden + kNormPad accumulation-type
// elements (the row's h in the accumulation type, when h is stored narrower).
// Backward over rows [r0, r1): `gw`, `gb`, `gib` (each hidden + kNormPad accumulation-type
// elements, zeroed, or null when not wanted) receive the chunk's column sums.
#define DX_NORM_DECLARE(isa)                                                                               \
  void norm_forward_##isa(const NormArgs& a, const NormParams& p, int64_t r0, int64_t r1, void* row);     \
  void norm_backward_##isa(const NormArgs& a, const NormParams& p, int64_t r0, int64_t r1, void* gw, void* gb, \
                           void* gib);
DX_NORM_DECLARE(scalar)
DX_NORM_DECLARE(avx2)
DX_NORM_DECLARE(avx512)
#undef DX_NORM_DECLARE

}  // namespace cpu
}  // namespace dropout_ext

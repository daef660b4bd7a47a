// Raw CPU kernels of the fused dropout + add + norm ops (../norm_args.h): pointers and
// sizes only, no ATen types, like kernels.h. The launcher (norm_launch.cpp) splits the
// rows into chunks (first rows r with r * hidden % 8 == 0, so that no two chunks write one
// byte of the bit mask) and runs each chunk on one thread with the functions here.
#pragma once

#include <cstddef>
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

// Forward over rows [r0, r1): `row` is scratch of norm_fwd_scratch bytes (64-byte aligned):
// the row's h in the accumulation type (when h is stored narrower), then its keep words.
// Backward over rows [r0, r1): `row` is scratch of 2 * (hidden + kNormPad) accumulation-type
// elements; `gw`, `gb`, `gib` (each hidden + kNormPad accumulation-type elements, zeroed, or
// null when not wanted) receive the chunk's column sums.
inline int64_t norm_row_bytes(int64_t hidden, size_t acc_size) {
  return ((hidden + kNormPad) * static_cast<int64_t>(acc_size) + 63) / 64 * 64;
}
inline int64_t norm_fwd_scratch(int64_t hidden, size_t acc_size) {
  return norm_row_bytes(hidden, acc_size) + ((hidden + 63) / 64 + 1) * 8;
}

#define DX_NORM_DECLARE(isa)                                                                               \
  void norm_forward_##isa(const NormArgs& a, const NormParams& p, int64_t r0, int64_t r1, void* row);     \
  void norm_backward_##isa(const NormArgs& a, const NormParams& p, int64_t r0, int64_t r1, void* row, void* gw, \
                           void* gb, void* gib);
DX_NORM_DECLARE(scalar)
DX_NORM_DECLARE(avx2)
DX_NORM_DECLARE(avx512)
#undef DX_NORM_DECLARE

}  // namespace cpu
}  // namespace dropout_ext

// Raw CPU kernels: pointers and sizes only, no ATen types.
//
// The SIMD kernels live in a translation unit whose functions carry GCC `target`
// attributes (AVX2, AVX-512). Keeping ATen out of that unit means no inline torch
// function can be emitted there with wider instructions and then picked by the linker
// for code that runs on a CPU without them. The ATen glue (dropout_cpu.cpp) fills a
// PassArgs and calls run_pass.
#pragma once

#include <cstdint>

#include "../philox.h"

namespace dropout_ext {
namespace cpu {

enum class DType : int { Float16 = 0, BFloat16 = 1, Float32 = 2, Float64 = 3 };

// What one pass computes per element, with f = keep ? scale : 0 (a dropped element is
// x * 0, so NaN stays NaN and -x gives -0.0):
//   Dropout          out = x * f
//   DropoutAdd       out = residual + x * f
//   BiasDropoutAdd   out = residual + (x + bias[i % bias_len]) * f
// 16-bit types compute in float32 and round once at the store.
enum class Op : int { Dropout = 0, DropoutAdd = 1, BiasDropoutAdd = 2 };

enum class Isa : int { Scalar = 0, Avx2 = 1, Avx512 = 2 };

struct PassArgs {
  DType dtype = DType::Float32;
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
};

// Elements handed to one SIMD iteration; thread ranges start at multiples of it so
// that no two threads share a byte of the bit mask.
constexpr int64_t kChunk = 64;

// Each computes elements [begin, end) of the pass (group == 1); begin % kChunk == 0.
void run_range_scalar(const PassArgs& a, int64_t begin, int64_t end);
void run_range_avx2(const PassArgs& a, int64_t begin, int64_t end);
void run_range_avx512(const PassArgs& a, int64_t begin, int64_t end);

// Group > 1: words [gbegin, gend) with their `group` elements each. Needs bits_in.
void run_groups(const PassArgs& a, int64_t gbegin, int64_t gend);

// Writes the keep bits of words [begin, end) (begin % 8 == 0) to bits.
void fill_keep_bits(const MaskParams& m, int64_t begin, int64_t end, uint8_t* bits);

bool isa_supported(Isa isa);
Isa best_isa();
const char* isa_name(Isa isa);

}  // namespace cpu
}  // namespace dropout_ext

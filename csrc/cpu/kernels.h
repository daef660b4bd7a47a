// Raw CPU kernels: pointers and sizes only, no ATen types.
//
// The SIMD kernels live in a translation unit whose functions carry GCC `target`
// attributes (AVX2, AVX-512). Keeping ATen out of that unit means no inline torch
// function can be emitted there with wider instructions and then picked by the linker
// for code that runs on a CPU without them. The ATen glue (dropout_cpu.cpp) fills a
// PassArgs (../pass_args.h, shared with the CUDA kernels) and calls the functions here.
#pragma once

#include <cstdint>

#include "../pass_args.h"

namespace dropout_ext {
namespace cpu {

enum class Isa : int { Scalar = 0, Avx2 = 1, Avx512 = 2 };

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

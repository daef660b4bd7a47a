// Raw CPU kernels: pointers and sizes only, no ATen types.
//
// The SIMD kernels live in a translation unit compiled under `#pragma GCC target` for
// AVX2 or AVX-512. Keeping ATen out of that unit means no inline torch function can be
// emitted there with wider instructions and then picked by the linker for code that runs
// on a CPU without them. The launcher (launch.cpp) fills a PassArgs (../pass_args.h,
// shared with the CUDA kernels) and calls the functions here from its threads.
#pragma once

#include <cstdint>

#include "../pass_args.h"

namespace dropout_ext {
namespace cpu {

enum class Isa : int { Scalar = 0, Avx2 = 1, Avx512 = 2 };

// Row mode: a range of work items is the logical indices [64 * begin, 64 * end) (clipped
// to numel), so that threads never share a 64-bit word of the bit mask. Tile mode: items
// are (outer index, block of 64 columns of the last dim), see engine.inc.
constexpr int64_t kRowItem = 64;
constexpr int64_t kTileRows = 16;
constexpr int64_t kTileCols = 64;

void run_range_scalar(const PassArgs& a, int64_t begin, int64_t end);
void run_range_avx2(const PassArgs& a, int64_t begin, int64_t end);
void run_range_avx512(const PassArgs& a, int64_t begin, int64_t end);

bool isa_supported(Isa isa);
// The path in use (launch.cpp: DROPOUT_EXT_CPU_ISA, or the best the CPU supports).
Isa current_isa();
Isa best_isa();
const char* isa_name(Isa isa);

}  // namespace cpu
}  // namespace dropout_ext

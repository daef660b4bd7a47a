// Portable path: plain C++ (SSE2 at most, the x86-64 baseline), one Philox block per four
// elements. The SIMD paths are tested against it bit for bit. Also run-time ISA detection.
#include "kernels.h"
#include "philox_scalar.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

namespace dropout_ext {
namespace cpu {
namespace {
namespace scalar_isa {

using F16 = c10::Half;
using BF16 = c10::BFloat16;

// Arithmetic type: float32 for the 16-bit types, else the type itself (docs/design.md,
// "The arithmetic").
template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

struct Vec : PhiloxScalar {
  template <typename T, Op OP>
  static void apply16(T* out, const T* x, const T* r, const T* b, uint32_t keep, const MaskParams& m) {
    using A = typename Acc<T>::type;
    const A scale = static_cast<A>(sizeof(A) == 8 ? m.scale_d : m.scale_f);
    const A keep_shift = static_cast<A>(sizeof(A) == 8 ? m.keep_shift_d : m.keep_shift_f);
    const A drop_shift = static_cast<A>(sizeof(A) == 8 ? m.drop_shift_d : m.drop_shift_f);
    for (int q = 0; q < 16; ++q) {
      const bool kept = (keep >> q) & 1u;
      A v = static_cast<A>(x[q]);
      if (OP == Op::BiasDropoutAdd) v = v + static_cast<A>(b[q]);
      v = v * (kept ? scale : A(0));
      if (OP == Op::DropoutAdd || OP == Op::BiasDropoutAdd) v = static_cast<A>(r[q]) + v;
      if (OP == Op::Alpha) v = v + (kept ? keep_shift : drop_shift);
      out[q] = static_cast<T>(v);
    }
  }

  static void transpose16x64(const uint64_t rows[16], uint16_t cols[64]) {
    for (int t = 0; t < 64; ++t) {
      uint32_t c = 0;
      for (int r = 0; r < 16; ++r) c |= static_cast<uint32_t>((rows[r] >> t) & 1u) << r;
      cols[t] = static_cast<uint16_t>(c);
    }
  }
};

#include "engine.inc"

}  // namespace scalar_isa
}  // namespace

void run_range_scalar(const PassArgs& a, int64_t begin, int64_t end) { scalar_isa::run_pass_range(a, begin, end); }

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return "scalar";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
  }
  return "?";
}

// Run-time detection (libgcc's cpuid + xgetbv checks, so OS support is included).
bool isa_supported(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return true;
#if defined(__x86_64__) || defined(__i386__)
    case Isa::Avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("f16c");
    case Isa::Avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
             isa_supported(Isa::Avx2);
#else
    default: return false;
#endif
  }
  return false;
}

Isa best_isa() {
  if (isa_supported(Isa::Avx512)) return Isa::Avx512;
  if (isa_supported(Isa::Avx2)) return Isa::Avx2;
  return Isa::Scalar;
}

}  // namespace cpu
}  // namespace dropout_ext

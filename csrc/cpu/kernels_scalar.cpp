// Portable path: one Philox block per four elements, plain C++ (SSE2 at most, the
// x86-64 baseline). It is also the reference the SIMD paths are tested against, and it
// handles the tails and the rare chunks the SIMD paths skip.
#include "kernels.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdlib>
#include <cstring>

namespace dropout_ext {
namespace cpu {
namespace {

// Arithmetic type: float32 for the 16-bit types (SPEC section 2), else the type itself.
template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

template <typename T> inline typename Acc<T>::type keep_factor(const MaskParams& m, bool keep);
template <> inline float keep_factor<float>(const MaskParams& m, bool keep) { return keep ? m.scale_f : 0.f; }
template <> inline float keep_factor<c10::Half>(const MaskParams& m, bool keep) { return keep ? m.scale_f : 0.f; }
template <> inline float keep_factor<c10::BFloat16>(const MaskParams& m, bool keep) { return keep ? m.scale_f : 0.f; }
template <> inline double keep_factor<double>(const MaskParams& m, bool keep) { return keep ? m.scale_d : 0.0; }

template <typename T>
inline T apply_one(const PassArgs& a, int64_t i, typename Acc<T>::type f) {
  using A = typename Acc<T>::type;
  const A x = static_cast<A>(static_cast<const T*>(a.x)[i]);
  switch (a.op) {
    case Op::Dropout:
      return static_cast<T>(x * f);
    case Op::DropoutAdd: {
      const A r = static_cast<A>(static_cast<const T*>(a.residual)[i]);
      return static_cast<T>(r + x * f);
    }
    case Op::BiasDropoutAdd: {
      const A r = static_cast<A>(static_cast<const T*>(a.residual)[i]);
      const A b = static_cast<A>(static_cast<const T*>(a.bias)[i % a.bias_len]);
      return static_cast<T>(r + (x + b) * f);
    }
  }
  return T(0);
}

// Keep decisions for consecutive logical indices from `begin` on: one Philox block per
// four elements.
class KeepDraw {
 public:
  KeepDraw(const MaskParams& m, int64_t begin) : m_(m), begin_(begin) {}
  bool operator()(int64_t i) {
    if (m_.drop_all) return false;
    if (i == begin_ || (i & 3) == 0) words_ = philox_block(m_, static_cast<uint64_t>(i) >> 2);
    return words_.v[i & 3] >= m_.threshold;
  }

 private:
  const MaskParams& m_;
  const int64_t begin_;
  Philox4 words_{};
};

// Packs keep decisions of consecutive indices into bytes (bit i % 8 of byte i / 8); the
// last byte of the range is written with its unused high bits zero.
class BitPacker {
 public:
  BitPacker(uint8_t* bits, int64_t end) : bits_(bits), end_(end) {}
  void add(int64_t i, bool keep) {
    byte_ |= static_cast<uint8_t>(keep) << (i & 7);
    if ((i & 7) == 7 || i + 1 == end_) {
      bits_[i >> 3] = byte_;
      byte_ = 0;
    }
  }

 private:
  uint8_t* bits_;
  const int64_t end_;
  uint8_t byte_ = 0;
};

template <typename T>
void range_impl(const PassArgs& a, int64_t begin, int64_t end) {
  T* out = static_cast<T*>(a.out);
  KeepDraw draw(a.mask, begin);
  BitPacker pack(a.bits_out, end);
  for (int64_t i = begin; i < end; ++i) {
    const bool keep = a.bits_in ? (a.bits_in[i >> 3] >> (i & 7)) & 1 : draw(i);
    if (a.bits_out) pack.add(i, keep);
    out[i] = apply_one<T>(a, i, keep_factor<T>(a.mask, keep));
  }
}

template <typename T>
void groups_impl(const PassArgs& a, int64_t gbegin, int64_t gend) {
  T* out = static_cast<T*>(a.out);
  for (int64_t g = gbegin; g < gend; ++g) {
    const bool keep = (a.bits_in[g >> 3] >> (g & 7)) & 1;
    const auto f = keep_factor<T>(a.mask, keep);
    const int64_t stop = (g + 1) * a.group;
    for (int64_t i = g * a.group; i < stop; ++i) out[i] = apply_one<T>(a, i, f);
  }
}

template <template <typename> class Fn, typename... Args>
void by_dtype(DType d, Args&&... args) {
  switch (d) {
    case DType::Float16: Fn<c10::Half>::run(args...); break;
    case DType::BFloat16: Fn<c10::BFloat16>::run(args...); break;
    case DType::Float32: Fn<float>::run(args...); break;
    case DType::Float64: Fn<double>::run(args...); break;
  }
}
template <typename T> struct RangeFn {
  static void run(const PassArgs& a, int64_t b, int64_t e) { range_impl<T>(a, b, e); }
};
template <typename T> struct GroupsFn {
  static void run(const PassArgs& a, int64_t b, int64_t e) { groups_impl<T>(a, b, e); }
};

}  // namespace

void run_range_scalar(const PassArgs& a, int64_t begin, int64_t end) {
  by_dtype<RangeFn>(a.dtype, a, begin, end);
}

void run_groups(const PassArgs& a, int64_t gbegin, int64_t gend) {
  by_dtype<GroupsFn>(a.dtype, a, gbegin, gend);
}

void fill_keep_bits(const MaskParams& m, int64_t begin, int64_t end, uint8_t* bits) {
  KeepDraw draw(m, begin);
  BitPacker pack(bits, end);
  for (int64_t i = begin; i < end; ++i) pack.add(i, draw(i));
}

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

// AVX2 and AVX-512 paths, chosen at run time (see isa_supported in kernels_scalar.cpp).
//
// Why `#pragma GCC target` regions rather than per-file -m flags or ATen's
// CPU-capability dispatch: the package is built by torch.utils.cpp_extension, which
// compiles every source with the same flags, and ATen's DispatchStub machinery is not
// available to extensions. The pragma puts the wide instructions on exactly the code
// below and in simd.h (the engine of engine.inc and the Vec primitives of each ISA) and
// nowhere else: every header is included before the first pragma and no std:: or torch
// template is instantiated inside a region, so a wheel built on an AVX-512 machine still
// runs on any x86-64.
//
// Philox (simd.h, shared with the fused norm kernels): 16 counters in vector lanes give the
// 64 words of one aligned block; a transpose puts them in element order and an unsigned
// compare gives the keep bits. -ffp-contract=off (setup.py) keeps `r + x * f` at two
// roundings, as the Python reference computes it.
#include "simd.h"

#if defined(DX_CPU_SIMD)

namespace dropout_ext {
namespace cpu {
namespace {

// ----------------------------------------------------------------------------- AVX-512
DX_TARGET_AVX512_BEGIN
namespace v512 {

struct Vec : Philox {
  template <Op OP>
  static void apply8d(double* out, const double* x, const double* r, const double* b, __mmask8 keep,
                      const MaskParams& m) {
    __m512d v = _mm512_loadu_pd(x);
    if (OP == Op::BiasDropoutAdd) v = _mm512_add_pd(v, _mm512_loadu_pd(b));
    v = _mm512_mul_pd(v, _mm512_maskz_mov_pd(keep, _mm512_set1_pd(m.scale_d)));
    if (OP == Op::DropoutAdd || OP == Op::BiasDropoutAdd) v = _mm512_add_pd(_mm512_loadu_pd(r), v);
    if (OP == Op::Alpha)
      v = _mm512_add_pd(v, _mm512_mask_mov_pd(_mm512_set1_pd(m.drop_shift_d), keep, _mm512_set1_pd(m.keep_shift_d)));
    _mm512_storeu_pd(out, v);
  }

  template <typename T, Op OP>
  static void apply16(T* out, const T* x, const T* r, const T* b, uint32_t keep, const MaskParams& m) {
    if constexpr (sizeof(T) == 8) {
      apply8d<OP>(out, x, r, b, static_cast<__mmask8>(keep), m);
      apply8d<OP>(out + 8, x + 8, r ? r + 8 : r, b ? b + 8 : b, static_cast<__mmask8>(keep >> 8), m);
    } else {
      const __mmask16 k = static_cast<__mmask16>(keep);
      __m512 v = load16<T>(x);
      if (OP == Op::BiasDropoutAdd) v = _mm512_add_ps(v, load16<T>(b));
      v = _mm512_mul_ps(v, _mm512_maskz_mov_ps(k, _mm512_set1_ps(m.scale_f)));
      if (OP == Op::DropoutAdd || OP == Op::BiasDropoutAdd) v = _mm512_add_ps(load16<T>(r), v);
      if (OP == Op::Alpha)
        v = _mm512_add_ps(v, _mm512_mask_mov_ps(_mm512_set1_ps(m.drop_shift_f), k, _mm512_set1_ps(m.keep_shift_f)));
      store16<T>(out, v);
    }
  }

  // cols[t] bit r = rows[r] bit t: two vptestmq per column.
  static void transpose16x64(const uint64_t rows[16], uint16_t cols[64]) {
    const __m512i lo = _mm512_loadu_si512(rows), hi = _mm512_loadu_si512(rows + 8);
    __m512i bit = _mm512_set1_epi64(1);
    for (int t = 0; t < 64; ++t) {
      cols[t] = static_cast<uint16_t>(_mm512_test_epi64_mask(lo, bit) | (_mm512_test_epi64_mask(hi, bit) << 8));
      bit = _mm512_slli_epi64(bit, 1);
    }
  }
};

#include "engine.inc"

}  // namespace v512
DX_TARGET_END

// -------------------------------------------------------------------------------- AVX2
DX_TARGET_AVX2_BEGIN
namespace v256 {

struct Vec : Philox {
  template <typename T, Op OP>
  static void apply8(T* out, const T* x, const T* r, const T* b, uint32_t keep, const MaskParams& m) {
    const __m256i on = expand8(keep);
    __m256 v = load8<T>(x);
    if (OP == Op::BiasDropoutAdd) v = _mm256_add_ps(v, load8<T>(b));
    v = _mm256_mul_ps(v, _mm256_and_ps(_mm256_castsi256_ps(on), _mm256_set1_ps(m.scale_f)));
    if (OP == Op::DropoutAdd || OP == Op::BiasDropoutAdd) v = _mm256_add_ps(load8<T>(r), v);
    if (OP == Op::Alpha)
      v = _mm256_add_ps(v, _mm256_blendv_ps(_mm256_set1_ps(m.drop_shift_f), _mm256_set1_ps(m.keep_shift_f),
                                            _mm256_castsi256_ps(on)));
    store8<T>(out, v);
  }

  template <Op OP>
  static void apply4d(double* out, const double* x, const double* r, const double* b, uint32_t keep,
                      const MaskParams& m) {
    const __m256i on = expand4(keep);
    __m256d v = _mm256_loadu_pd(x);
    if (OP == Op::BiasDropoutAdd) v = _mm256_add_pd(v, _mm256_loadu_pd(b));
    v = _mm256_mul_pd(v, _mm256_and_pd(_mm256_castsi256_pd(on), _mm256_set1_pd(m.scale_d)));
    if (OP == Op::DropoutAdd || OP == Op::BiasDropoutAdd) v = _mm256_add_pd(_mm256_loadu_pd(r), v);
    if (OP == Op::Alpha)
      v = _mm256_add_pd(v, _mm256_blendv_pd(_mm256_set1_pd(m.drop_shift_d), _mm256_set1_pd(m.keep_shift_d),
                                            _mm256_castsi256_pd(on)));
    _mm256_storeu_pd(out, v);
  }

  template <typename T, Op OP>
  static void apply16(T* out, const T* x, const T* r, const T* b, uint32_t keep, const MaskParams& m) {
    if constexpr (sizeof(T) == 8) {
      for (int h = 0; h < 4; ++h)
        apply4d<OP>(out + 4 * h, x + 4 * h, r ? r + 4 * h : r, b ? b + 4 * h : b, (keep >> (4 * h)) & 0xF, m);
    } else {
      apply8<T, OP>(out, x, r, b, keep & 0xFF, m);
      apply8<T, OP>(out + 8, x + 8, r ? r + 8 : r, b ? b + 8 : b, (keep >> 8) & 0xFF, m);
    }
  }

  // cols[t] bit r = rows[r] bit t: shift bit t to the sign and collect signs.
  static void transpose16x64(const uint64_t rows[16], uint16_t cols[64]) {
    __m256i v[4];
    for (int q = 0; q < 4; ++q) v[q] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows + 4 * q));
    for (int t = 0; t < 64; ++t) {
      const __m128i sh = _mm_cvtsi32_si128(63 - t);
      uint32_t c = 0;
      for (int q = 0; q < 4; ++q)
        c |= static_cast<uint32_t>(_mm256_movemask_pd(_mm256_castsi256_pd(_mm256_sll_epi64(v[q], sh)))) << (4 * q);
      cols[t] = static_cast<uint16_t>(c);
    }
  }
};

#include "engine.inc"

}  // namespace v256
DX_TARGET_END

}  // namespace

void run_range_avx512(const PassArgs& a, int64_t begin, int64_t end) { v512::run_pass_range(a, begin, end); }
void run_range_avx2(const PassArgs& a, int64_t begin, int64_t end) { v256::run_pass_range(a, begin, end); }

}  // namespace cpu
}  // namespace dropout_ext

#else  // not x86-64 with GCC/Clang: the scalar path serves every request.

namespace dropout_ext {
namespace cpu {
void run_range_avx512(const PassArgs& a, int64_t begin, int64_t end) { run_range_scalar(a, begin, end); }
void run_range_avx2(const PassArgs& a, int64_t begin, int64_t end) { run_range_scalar(a, begin, end); }
}  // namespace cpu
}  // namespace dropout_ext

#endif

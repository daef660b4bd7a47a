// AVX-512 and AVX2 paths of the fused norm ops (norm_engine.inc), chosen at run time like
// the dropout passes (kernels_simd.cpp says why `#pragma GCC target` regions, and why no
// std:: or torch template is instantiated inside them). Each ISA supplies Lanes<float>
// and Lanes<double> over simd.h's loads, stores and Philox blocks; the stores round as
// the dropout passes do, so h is bit for bit dropout_add's output.
#include "norm_kernels.h"
#include "simd.h"

#if defined(DX_CPU_SIMD)

namespace dropout_ext {
namespace cpu {
namespace {

// ----------------------------------------------------------------------------- AVX-512
DX_TARGET_AVX512_BEGIN
namespace v512 {

using Vec = Philox;

inline __mmask16 first16(int n) { return static_cast<__mmask16>((1u << n) - 1u); }

template <typename A> struct Lanes;

template <> struct Lanes<float> {
  using R = __m512;
  static constexpr int W = 16;
  static R zero() { return _mm512_setzero_ps(); }
  static R set1(float v) { return _mm512_set1_ps(v); }
  static R add(R a, R b) { return _mm512_add_ps(a, b); }
  static R sub(R a, R b) { return _mm512_sub_ps(a, b); }
  static R mul(R a, R b) { return _mm512_mul_ps(a, b); }
  static R fma(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
  static R fnmadd(R a, R b, R c) { return _mm512_fnmadd_ps(a, b, c); }
  static float hsum(R v) { return _mm512_reduce_add_ps(v); }
  static R keep(uint32_t bits, float s) { return _mm512_maskz_mov_ps(static_cast<__mmask16>(bits), _mm512_set1_ps(s)); }
  static R first(R v, int n) { return _mm512_maskz_mov_ps(first16(n), v); }

  static R load(const float* p) { return _mm512_loadu_ps(p); }
  static R load(const F16* p) { return load16(p); }
  static R load(const BF16* p) { return load16(p); }
  static R load_n(const float* p, int n) { return _mm512_maskz_loadu_ps(first16(n), p); }
  static R load_n(const F16* p, int n) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(first16(n), p)); }
  static R load_n(const BF16* p, int n) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(first16(n), p)), 16));
  }

  static __m256i half_bits(R v) { return _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static R store(float* p, R v) {
    _mm512_storeu_ps(p, v);
    return v;
  }
  static R store(F16* p, R v) {
    const __m256i h = half_bits(v);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), h);
    return _mm512_cvtph_ps(h);
  }
  static R store(BF16* p, R v) {
    const __m512i h = bf16_bits16(v);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(h));
    return _mm512_castsi512_ps(_mm512_slli_epi32(h, 16));
  }
  static R store_n(float* p, R v, int n) {
    _mm512_mask_storeu_ps(p, first16(n), v);
    return v;
  }
  static R store_n(F16* p, R v, int n) {
    const __m256i h = half_bits(v);
    _mm256_mask_storeu_epi16(p, first16(n), h);
    return _mm512_cvtph_ps(h);
  }
  static R store_n(BF16* p, R v, int n) {
    const __m512i h = bf16_bits16(v);
    _mm256_mask_storeu_epi16(p, first16(n), _mm512_cvtepi32_epi16(h));
    return _mm512_castsi512_ps(_mm512_slli_epi32(h, 16));
  }
};

template <> struct Lanes<double> {
  using R = __m512d;
  static constexpr int W = 8;
  static __mmask8 first8(int n) { return static_cast<__mmask8>((1u << n) - 1u); }
  static R zero() { return _mm512_setzero_pd(); }
  static R set1(double v) { return _mm512_set1_pd(v); }
  static R add(R a, R b) { return _mm512_add_pd(a, b); }
  static R sub(R a, R b) { return _mm512_sub_pd(a, b); }
  static R mul(R a, R b) { return _mm512_mul_pd(a, b); }
  static R fma(R a, R b, R c) { return _mm512_fmadd_pd(a, b, c); }
  static R fnmadd(R a, R b, R c) { return _mm512_fnmadd_pd(a, b, c); }
  static double hsum(R v) { return _mm512_reduce_add_pd(v); }
  static R keep(uint32_t bits, double s) { return _mm512_maskz_mov_pd(static_cast<__mmask8>(bits), _mm512_set1_pd(s)); }
  static R first(R v, int n) { return _mm512_maskz_mov_pd(first8(n), v); }
  static R load(const double* p) { return _mm512_loadu_pd(p); }
  static R load_n(const double* p, int n) { return _mm512_maskz_loadu_pd(first8(n), p); }
  static R store(double* p, R v) {
    _mm512_storeu_pd(p, v);
    return v;
  }
  static R store_n(double* p, R v, int n) {
    _mm512_mask_storeu_pd(p, first8(n), v);
    return v;
  }
};

#include "norm_engine.inc"

}  // namespace v512
DX_TARGET_END

// -------------------------------------------------------------------------------- AVX2
DX_TARGET_AVX2_BEGIN
namespace v256 {

using Vec = Philox;

// Fewer than a vector's elements go through a zeroed stack buffer (AVX2 has no masked
// 16-bit loads and stores).
template <typename T, int W>
struct Partial {
  T buf[W];
  Partial() { __builtin_memset(static_cast<void*>(buf), 0, sizeof(buf)); }
  const T* in(const T* p, int n) {
    __builtin_memcpy(static_cast<void*>(buf), p, sizeof(T) * n);
    return buf;
  }
  void out(T* p, int n) const { __builtin_memcpy(static_cast<void*>(p), buf, sizeof(T) * n); }
};

template <typename A> struct Lanes;

template <> struct Lanes<float> {
  using R = __m256;
  static constexpr int W = 8;
  static R zero() { return _mm256_setzero_ps(); }
  static R set1(float v) { return _mm256_set1_ps(v); }
  static R add(R a, R b) { return _mm256_add_ps(a, b); }
  static R sub(R a, R b) { return _mm256_sub_ps(a, b); }
  static R mul(R a, R b) { return _mm256_mul_ps(a, b); }
  static R fma(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  static R fnmadd(R a, R b, R c) { return _mm256_fnmadd_ps(a, b, c); }
  static float hsum(R v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static R keep(uint32_t bits, float s) { return _mm256_and_ps(_mm256_castsi256_ps(expand8(bits)), _mm256_set1_ps(s)); }
  static R first(R v, int n) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(n), lane)));
  }

  static R load(const float* p) { return _mm256_loadu_ps(p); }
  static R load(const F16* p) { return load8(p); }
  static R load(const BF16* p) { return load8(p); }
  template <typename T>
  static R load_n(const T* p, int n) {
    Partial<T, W> t;
    return load(t.in(p, n));
  }

  static __m128i half_bits(R v) { return _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static R store(float* p, R v) {
    _mm256_storeu_ps(p, v);
    return v;
  }
  static R store(F16* p, R v) {
    const __m128i h = half_bits(v);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), h);
    return _mm256_cvtph_ps(h);
  }
  static R store(BF16* p, R v) {
    const __m256i h = bf16_bits8(v);  // < 2**16 per lane: packus keeps them
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                     _mm_packus_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
  }
  template <typename T>
  static R store_n(T* p, R v, int n) {
    Partial<T, W> t;
    const R r = store(t.buf, v);
    t.out(p, n);
    return r;
  }
};

template <> struct Lanes<double> {
  using R = __m256d;
  static constexpr int W = 4;
  static R zero() { return _mm256_setzero_pd(); }
  static R set1(double v) { return _mm256_set1_pd(v); }
  static R add(R a, R b) { return _mm256_add_pd(a, b); }
  static R sub(R a, R b) { return _mm256_sub_pd(a, b); }
  static R mul(R a, R b) { return _mm256_mul_pd(a, b); }
  static R fma(R a, R b, R c) { return _mm256_fmadd_pd(a, b, c); }
  static R fnmadd(R a, R b, R c) { return _mm256_fnmadd_pd(a, b, c); }
  static double hsum(R v) {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    s = _mm_add_sd(s, _mm_unpackhi_pd(s, s));
    return _mm_cvtsd_f64(s);
  }
  static R keep(uint32_t bits, double s) { return _mm256_and_pd(_mm256_castsi256_pd(expand4(bits)), _mm256_set1_pd(s)); }
  static R first(R v, int n) {
    const __m256i lane = _mm256_setr_epi64x(0, 1, 2, 3);
    return _mm256_and_pd(v, _mm256_castsi256_pd(_mm256_cmpgt_epi64(_mm256_set1_epi64x(n), lane)));
  }
  static R load(const double* p) { return _mm256_loadu_pd(p); }
  static R load_n(const double* p, int n) {
    Partial<double, W> t;
    return load(t.in(p, n));
  }
  static R store(double* p, R v) {
    _mm256_storeu_pd(p, v);
    return v;
  }
  static R store_n(double* p, R v, int n) {
    Partial<double, W> t;
    store(t.buf, v);
    t.out(p, n);
    return v;
  }
};

#include "norm_engine.inc"

}  // namespace v256
DX_TARGET_END

}  // namespace

void norm_forward_avx512(const NormArgs& a, const NormParams& p, int64_t r0, int64_t r1, void* row) {
  v512::norm_forward_rows(a, p, r0, r1, row);
}
void norm_backward_avx512(const NormArgs& a, const NormParams& p, int64_t r0, int64_t r1, void* row, void* gw,
                          void* gb, void* gib) {
  v512::norm_backward_rows(a, p, r0, r1, row, gw, gb, gib);
}
void norm_forward_avx2(const NormArgs& a, const NormParams& p, int64_t r0, int64_t r1, void* row) {
  v256::norm_forward_rows(a, p, r0, r1, row);
}
void norm_backward_avx2(const NormArgs& a, const NormParams& p, int64_t r0, int64_t r1, void* row, void* gw,
                        void* gb, void* gib) {
  v256::norm_backward_rows(a, p, r0, r1, row, gw, gb, gib);
}

}  // namespace cpu
}  // namespace dropout_ext

#else  // not x86-64 with GCC/Clang: the scalar path serves every request.

namespace dropout_ext {
namespace cpu {
void norm_forward_avx512(const NormArgs& a, const NormParams& p, int64_t r0, int64_t r1, void* row) {
  norm_forward_scalar(a, p, r0, r1, row);
}
void norm_backward_avx512(const NormArgs& a, const NormParams& p, int64_t r0, int64_t r1, void* row, void* gw,
                          void* gb, void* gib) {
  norm_backward_scalar(a, p, r0, r1, row, gw, gb, gib);
}
void norm_forward_avx2(const NormArgs& a, const NormParams& p, int64_t r0, int64_t r1, void* row) {
  norm_forward_scalar(a, p, r0, r1, row);
}
void norm_backward_avx2(const NormArgs& a, const NormParams& p, int64_t r0, int64_t r1, void* row, void* gw,
                        void* gb, void* gib) {
  norm_backward_scalar(a, p, r0, r1, row, gw, gb, gib);
}
}  // namespace cpu
}  // namespace dropout_ext

#endif

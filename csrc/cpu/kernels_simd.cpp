// AVX2 and AVX-512 paths, chosen at run time (see isa_supported in kernels_scalar.cpp).
//
// Why GCC `target` attributes rather than per-file -m flags or ATen's CPU-capability
// dispatch: the package is built by torch.utils.cpp_extension, which compiles every
// source with the same flags, and ATen's DispatchStub machinery is not available to
// extensions. Attributes put the wide instructions on exactly the functions below and
// nowhere else (no torch or std inline code is instantiated here), so a wheel built on
// an AVX-512 machine still runs on any x86-64.
//
// One iteration handles 64 elements: 16 Philox counters in vector lanes give 4 words
// each, a transpose puts the words in element order, a compare gives the
// keep bits, and the data are loaded, scaled, stored and the bits written in the same
// pass. -ffp-contract=off (setup.py) keeps `r + x * f` two roundings, as the Python
// reference computes it.
#include "kernels.h"

#if defined(__x86_64__) && defined(__GNUC__)
// GCC 12 reports a false "may be used uninitialized" inside its own AVX-512 headers.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#define DX_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"), always_inline)) inline
#define DX_AVX512_OUTER __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#define DX_AVX2 __attribute__((target("avx2,fma,f16c"), always_inline)) inline
#define DX_AVX2_OUTER __attribute__((target("avx2,fma,f16c")))

namespace dropout_ext {
namespace cpu {
namespace {

struct half_t { uint16_t bits; };
struct bf16_t { uint16_t bits; };

// ----------------------------------------------------------------------------- AVX-512
namespace v512 {

// Eight Philox counters j0 .. j0+7 in 64-bit lanes, value in the low 32 bits. One
// vpmuludq then gives a whole 64-bit product (low word in place, high word one shift
// away), and the upper halves may hold garbage: vpmuludq reads only the low 32 bits and
// xor keeps halves apart. Returns words in element order: w[0] = elements 0..15 of the
// 32 starting at 4 * j0, w[1] = elements 16..31.
DX_AVX512 void philox32(const __m512i k0v[10], const __m512i k1v[10], uint64_t j0, uint64_t base,
                        __m512i w[2]) {
  __m512i c0 = _mm512_add_epi64(_mm512_set1_epi64(static_cast<long long>(j0)),
                                _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7));
  __m512i c1 = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(j0 >> 32)));
  __m512i c2 = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(base)));
  __m512i c3 = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(base >> 32)));
  const __m512i m0 = _mm512_set1_epi64(kPhiloxM0);
  const __m512i m1 = _mm512_set1_epi64(kPhiloxM1);
  for (int r = 0; r < 10; ++r) {
    const __m512i p0 = _mm512_mul_epu32(c0, m0);
    const __m512i p1 = _mm512_mul_epu32(c2, m1);
    // vpshufd moves each high word down (port 5; the multiply and shifts share port 0).
    c0 = _mm512_ternarylogic_epi64(_mm512_shuffle_epi32(p1, _MM_PERM_CDAB), c1, k0v[r], 0x96);  // a ^ b ^ c
    c1 = p1;
    c2 = _mm512_ternarylogic_epi64(_mm512_shuffle_epi32(p0, _MM_PERM_CDAB), c3, k1v[r], 0x96);
    c3 = p0;
  }
  // (c0, c1) and (c2, c3) as 32-bit pairs per 64-bit lane, then interleave the lanes so
  // that counter l's four words are elements 4l .. 4l+3.
  const __m512i t01 = _mm512_mask_shuffle_epi32(c0, 0xAAAA, c1, _MM_PERM_CDAB);
  const __m512i t23 = _mm512_mask_shuffle_epi32(c2, 0xAAAA, c3, _MM_PERM_CDAB);
  w[0] = _mm512_permutex2var_epi64(t01, _mm512_setr_epi64(0, 8, 1, 9, 2, 10, 3, 11), t23);
  w[1] = _mm512_permutex2var_epi64(t01, _mm512_setr_epi64(4, 12, 5, 13, 6, 14, 7, 15), t23);
}

// Round keys, broadcast once per range.
DX_AVX512 void round_keys(const MaskParams& m, __m512i k0v[10], __m512i k1v[10]) {
  uint32_t k0 = static_cast<uint32_t>(m.key), k1 = static_cast<uint32_t>(m.key >> 32);
  for (int r = 0; r < 10; ++r) {
    k0v[r] = _mm512_set1_epi32(static_cast<int>(k0));
    k1v[r] = _mm512_set1_epi32(static_cast<int>(k1));
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
}

template <typename T> DX_AVX512 __m512 load16(const void* p, int64_t i);
template <> DX_AVX512 __m512 load16<float>(const void* p, int64_t i) {
  return _mm512_loadu_ps(static_cast<const float*>(p) + i);
}
template <> DX_AVX512 __m512 load16<half_t>(const void* p, int64_t i) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(p) + i)));
}
template <> DX_AVX512 __m512 load16<bf16_t>(const void* p, int64_t i) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(p) + i));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

template <typename T> DX_AVX512 void store16(void* p, int64_t i, __m512 v);
template <> DX_AVX512 void store16<float>(void* p, int64_t i, __m512 v) {
  _mm512_storeu_ps(static_cast<float*>(p) + i, v);
}
template <> DX_AVX512 void store16<half_t>(void* p, int64_t i, __m512 v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(p) + i),
                      _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
// Round to nearest even like c10::BFloat16; NaN becomes the quiet NaN 0x7FC0.
template <> DX_AVX512 void store16<bf16_t>(void* p, int64_t i, __m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  const __m512i r = _mm512_mask_mov_epi32(rounded, nan, _mm512_set1_epi32(0x7FC0));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(p) + i), _mm512_cvtepi32_epi16(r));
}

// Bias values for elements i .. i+15 (bias index i % len), in float32.
template <typename T> DX_AVX512 __m512 bias16(const PassArgs& a, int64_t i) {
  const int64_t b0 = i % a.bias_len;
  if (b0 + 16 <= a.bias_len) return load16<T>(a.bias, b0);
  alignas(64) T tmp[16];
  for (int q = 0; q < 16; ++q) tmp[q] = static_cast<const T*>(a.bias)[(i + q) % a.bias_len];
  return load16<T>(tmp, 0);
}

template <typename T, Op OP>
DX_AVX512 void apply16(const PassArgs& a, int64_t i, __mmask16 keep) {
  const __m512 f = _mm512_maskz_mov_ps(keep, _mm512_set1_ps(a.mask.scale_f));
  __m512 x = load16<T>(a.x, i);
  if (OP == Op::BiasDropoutAdd) x = _mm512_add_ps(x, bias16<T>(a, i));
  __m512 y = _mm512_mul_ps(x, f);
  if (OP != Op::Dropout) y = _mm512_add_ps(load16<T>(a.residual, i), y);
  store16<T>(a.out, i, y);
}

DX_AVX512 __m512d bias8d(const PassArgs& a, int64_t i) {
  const double* b = static_cast<const double*>(a.bias);
  const int64_t b0 = i % a.bias_len;
  if (b0 + 8 <= a.bias_len) return _mm512_loadu_pd(b + b0);
  alignas(64) double tmp[8];
  for (int q = 0; q < 8; ++q) tmp[q] = b[(i + q) % a.bias_len];
  return _mm512_load_pd(tmp);
}

template <Op OP>
DX_AVX512 void apply8d(const PassArgs& a, int64_t i, __mmask8 keep) {
  const __m512d f = _mm512_maskz_mov_pd(keep, _mm512_set1_pd(a.mask.scale_d));
  __m512d x = _mm512_loadu_pd(static_cast<const double*>(a.x) + i);
  if (OP == Op::BiasDropoutAdd) x = _mm512_add_pd(x, bias8d(a, i));
  __m512d y = _mm512_mul_pd(x, f);
  if (OP != Op::Dropout) y = _mm512_add_pd(_mm512_loadu_pd(static_cast<const double*>(a.residual) + i), y);
  _mm512_storeu_pd(static_cast<double*>(a.out) + i, y);
}

template <typename T, Op OP>
DX_AVX512 void apply16_any(const PassArgs& a, int64_t i, __mmask16 keep) {
  if constexpr (sizeof(T) == 8) {
    apply8d<OP>(a, i, static_cast<__mmask8>(keep));
    apply8d<OP>(a, i + 8, static_cast<__mmask8>(keep >> 8));
  } else {
    apply16<T, OP>(a, i, keep);
  }
}

template <typename T, Op OP>
DX_AVX512_OUTER void range(const PassArgs& a, int64_t begin, int64_t end) {
  const MaskParams& m = a.mask;
  const __m512i thresh = _mm512_set1_epi32(static_cast<int>(m.threshold));
  __m512i k0v[10], k1v[10];
  round_keys(m, k0v, k1v);
  int64_t i = begin;
  for (; i + kChunk <= end; i += kChunk) {
    const uint64_t j0 = static_cast<uint64_t>(i) >> 2;
    __mmask16 k[4];
    if (a.bits_in) {
      for (int q = 0; q < 4; ++q) {
        uint16_t v;
        __builtin_memcpy(&v, a.bits_in + (i >> 3) + 2 * q, 2);
        k[q] = v;
      }
    } else if (m.drop_all) {
      k[0] = k[1] = k[2] = k[3] = 0;
    } else {
      if (static_cast<uint32_t>(j0) > 0xFFFFFFFFu - 15u) {  // counter low word wraps in this chunk
        run_range_scalar(a, i, i + kChunk);
        continue;
      }
      __m512i w[4];
      philox32(k0v, k1v, j0, m.base, w);
      philox32(k0v, k1v, j0 + 8, m.base, w + 2);
      for (int q = 0; q < 4; ++q) k[q] = _mm512_cmpge_epu32_mask(w[q], thresh);
    }
    if (a.bits_out) {
      for (int q = 0; q < 4; ++q) {
        const uint16_t v = k[q];
        __builtin_memcpy(a.bits_out + (i >> 3) + 2 * q, &v, 2);
      }
    }
    for (int q = 0; q < 4; ++q) apply16_any<T, OP>(a, i + 16 * q, k[q]);
  }
  if (i < end) run_range_scalar(a, i, end);
}

}  // namespace v512

// -------------------------------------------------------------------------------- AVX2
namespace v256 {

DX_AVX2 void mulhilo(__m256i a, __m256i m, __m256i* lo, __m256i* hi) {
  const __m256i even = _mm256_mul_epu32(a, m);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

// Words of counters j0 .. j0+7 in element order: w[q] holds elements 8q .. 8q+7 of the 32
// starting at 4 * j0.
DX_AVX2 void philox32(const MaskParams& m, uint64_t j0, __m256i w[4]) {
  __m256i c0 = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(j0))),
                                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  __m256i c1 = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(j0 >> 32)));
  __m256i c2 = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(m.base)));
  __m256i c3 = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(m.base >> 32)));
  uint32_t k0 = static_cast<uint32_t>(m.key), k1 = static_cast<uint32_t>(m.key >> 32);
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(kPhiloxM0));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(kPhiloxM1));
  for (int r = 0; r < 10; ++r) {
    __m256i lo0, hi0, lo1, hi1;
    mulhilo(c0, m0, &lo0, &hi0);
    mulhilo(c2, m1, &lo1, &hi1);
    c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32(static_cast<int>(k0)));
    c1 = lo1;
    c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32(static_cast<int>(k1)));
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  const __m256i t0 = _mm256_unpacklo_epi32(c0, c1), t1 = _mm256_unpackhi_epi32(c0, c1);
  const __m256i t2 = _mm256_unpacklo_epi32(c2, c3), t3 = _mm256_unpackhi_epi32(c2, c3);
  const __m256i r0 = _mm256_unpacklo_epi64(t0, t2), r1 = _mm256_unpackhi_epi64(t0, t2);
  const __m256i r2 = _mm256_unpacklo_epi64(t1, t3), r3 = _mm256_unpackhi_epi64(t1, t3);
  w[0] = _mm256_permute2x128_si256(r0, r1, 0x20);
  w[1] = _mm256_permute2x128_si256(r2, r3, 0x20);
  w[2] = _mm256_permute2x128_si256(r0, r1, 0x31);
  w[3] = _mm256_permute2x128_si256(r2, r3, 0x31);
}

template <typename T> DX_AVX2 __m256 load8(const void* p, int64_t i);
template <> DX_AVX2 __m256 load8<float>(const void* p, int64_t i) {
  return _mm256_loadu_ps(static_cast<const float*>(p) + i);
}
template <> DX_AVX2 __m256 load8<half_t>(const void* p, int64_t i) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(p) + i)));
}
template <> DX_AVX2 __m256 load8<bf16_t>(const void* p, int64_t i) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(p) + i));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

template <typename T> DX_AVX2 void store8(void* p, int64_t i, __m256 v);
template <> DX_AVX2 void store8<float>(void* p, int64_t i, __m256 v) {
  _mm256_storeu_ps(static_cast<float*>(p) + i, v);
}
template <> DX_AVX2 void store8<half_t>(void* p, int64_t i, __m256 v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(p) + i),
                   _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
template <> DX_AVX2 void store8<bf16_t>(void* p, int64_t i, __m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
  const __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), _mm256_castps_si256(nan));
  // Pack the eight 32-bit values (all < 2**16) to 16 bits without saturation issues.
  const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(p) + i), packed);
}

// Lane q of the result is all ones iff bit q of keep is set.
DX_AVX2 __m256i expand8(uint8_t keep) {
  const __m256i sel = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(keep), sel), sel);
}

template <typename T> DX_AVX2 __m256 bias8(const PassArgs& a, int64_t i) {
  const int64_t b0 = i % a.bias_len;
  if (b0 + 8 <= a.bias_len) return load8<T>(a.bias, b0);
  alignas(32) T tmp[8];
  for (int q = 0; q < 8; ++q) tmp[q] = static_cast<const T*>(a.bias)[(i + q) % a.bias_len];
  return load8<T>(tmp, 0);
}

template <typename T, Op OP>
DX_AVX2 void apply8(const PassArgs& a, int64_t i, uint8_t keep) {
  const __m256 f = _mm256_and_ps(_mm256_castsi256_ps(expand8(keep)), _mm256_set1_ps(a.mask.scale_f));
  __m256 x = load8<T>(a.x, i);
  if (OP == Op::BiasDropoutAdd) x = _mm256_add_ps(x, bias8<T>(a, i));
  __m256 y = _mm256_mul_ps(x, f);
  if (OP != Op::Dropout) y = _mm256_add_ps(load8<T>(a.residual, i), y);
  store8<T>(a.out, i, y);
}

DX_AVX2 __m256d bias4d(const PassArgs& a, int64_t i) {
  const double* b = static_cast<const double*>(a.bias);
  const int64_t b0 = i % a.bias_len;
  if (b0 + 4 <= a.bias_len) return _mm256_loadu_pd(b + b0);
  alignas(32) double tmp[4];
  for (int q = 0; q < 4; ++q) tmp[q] = b[(i + q) % a.bias_len];
  return _mm256_load_pd(tmp);
}

template <Op OP>
DX_AVX2 void apply4d(const PassArgs& a, int64_t i, uint8_t keep4) {
  const __m256i sel = _mm256_setr_epi64x(1, 2, 4, 8);
  const __m256i on = _mm256_cmpeq_epi64(_mm256_and_si256(_mm256_set1_epi64x(keep4), sel), sel);
  const __m256d f = _mm256_and_pd(_mm256_castsi256_pd(on), _mm256_set1_pd(a.mask.scale_d));
  __m256d x = _mm256_loadu_pd(static_cast<const double*>(a.x) + i);
  if (OP == Op::BiasDropoutAdd) x = _mm256_add_pd(x, bias4d(a, i));
  __m256d y = _mm256_mul_pd(x, f);
  if (OP != Op::Dropout) y = _mm256_add_pd(_mm256_loadu_pd(static_cast<const double*>(a.residual) + i), y);
  _mm256_storeu_pd(static_cast<double*>(a.out) + i, y);
}

template <typename T, Op OP>
DX_AVX2 void apply8_any(const PassArgs& a, int64_t i, uint8_t keep) {
  if constexpr (sizeof(T) == 8) {
    apply4d<OP>(a, i, keep & 0xF);
    apply4d<OP>(a, i + 4, keep >> 4);
  } else {
    apply8<T, OP>(a, i, keep);
  }
}

DX_AVX2 uint8_t keep_bits8(__m256i w, __m256i thresh) {
  // unsigned w >= t  <=>  max(w, t) == w
  const __m256i ge = _mm256_cmpeq_epi32(_mm256_max_epu32(w, thresh), w);
  return static_cast<uint8_t>(_mm256_movemask_ps(_mm256_castsi256_ps(ge)));
}

template <typename T, Op OP>
DX_AVX2_OUTER void range(const PassArgs& a, int64_t begin, int64_t end) {
  const MaskParams& m = a.mask;
  const __m256i thresh = _mm256_set1_epi32(static_cast<int>(m.threshold));
  int64_t i = begin;
  for (; i + kChunk <= end; i += kChunk) {
    const uint64_t j0 = static_cast<uint64_t>(i) >> 2;
    uint8_t k[8];
    if (a.bits_in) {
      __builtin_memcpy(k, a.bits_in + (i >> 3), 8);
    } else if (m.drop_all) {
      for (int q = 0; q < 8; ++q) k[q] = 0;
    } else {
      if (static_cast<uint32_t>(j0) > 0xFFFFFFFFu - 15u) {
        run_range_scalar(a, i, i + kChunk);
        continue;
      }
      for (int h = 0; h < 2; ++h) {
        __m256i w[4];
        philox32(m, j0 + 8 * h, w);
        for (int q = 0; q < 4; ++q) k[4 * h + q] = keep_bits8(w[q], thresh);
      }
    }
    if (a.bits_out) __builtin_memcpy(a.bits_out + (i >> 3), k, 8);
    for (int q = 0; q < 8; ++q) apply8_any<T, OP>(a, i + 8 * q, k[q]);
  }
  if (i < end) run_range_scalar(a, i, end);
}

}  // namespace v256

// ------------------------------------------------------------------------ dispatch
template <typename T, template <typename, Op> class R>
void by_op(const PassArgs& a, int64_t b, int64_t e) {
  switch (a.op) {
    case Op::Dropout: R<T, Op::Dropout>::run(a, b, e); break;
    case Op::DropoutAdd: R<T, Op::DropoutAdd>::run(a, b, e); break;
    case Op::BiasDropoutAdd: R<T, Op::BiasDropoutAdd>::run(a, b, e); break;
  }
}
template <template <typename, Op> class R>
void by_dtype_op(const PassArgs& a, int64_t b, int64_t e) {
  switch (a.dtype) {
    case DType::Float16: by_op<half_t, R>(a, b, e); break;
    case DType::BFloat16: by_op<bf16_t, R>(a, b, e); break;
    case DType::Float32: by_op<float, R>(a, b, e); break;
    case DType::Float64: by_op<double, R>(a, b, e); break;
  }
}
template <typename T, Op OP> struct R512 {
  static void run(const PassArgs& a, int64_t b, int64_t e) { v512::range<T, OP>(a, b, e); }
};
template <typename T, Op OP> struct R256 {
  static void run(const PassArgs& a, int64_t b, int64_t e) { v256::range<T, OP>(a, b, e); }
};

}  // namespace

void run_range_avx512(const PassArgs& a, int64_t begin, int64_t end) {
  by_dtype_op<R512>(a, begin, end);
}
void run_range_avx2(const PassArgs& a, int64_t begin, int64_t end) {
  by_dtype_op<R256>(a, begin, end);
}

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

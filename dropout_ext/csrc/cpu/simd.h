// The SIMD primitives of the AVX-512 and AVX2 paths, shared by the translation units that
// compile kernels for them (kernels_simd.cpp: the dropout passes, norm_simd.cpp: the fused
// norm ops): loads and stores of each storage type as float32 lanes, and Philox blocks in
// vector lanes, the keep bits of 64 aligned words at a time.
//
// Included before anything else of those units. Everything is in an unnamed namespace
// (each unit has its own copy: nothing compiled for a wider ISA is shared through the
// linker) and inside DX_TARGET_* regions, and instantiates no std:: or torch template
// (kernels_simd.cpp says why).
#pragma once

#include "kernels.h"

#if defined(__x86_64__) && defined(__GNUC__)
#define DX_CPU_SIMD 1
// GCC 12 reports a false "may be used uninitialized" inside its own AVX-512 headers.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

// The ISA regions, one spelling for every unit.
#define DX_TARGET_AVX512_BEGIN \
  _Pragma("GCC push_options") _Pragma("GCC target(\"avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c\")")
#define DX_TARGET_AVX2_BEGIN _Pragma("GCC push_options") _Pragma("GCC target(\"avx2,fma,f16c\")")
#define DX_TARGET_END _Pragma("GCC pop_options")

namespace dropout_ext {
namespace cpu {
namespace {

struct F16 { uint16_t bits; };
struct BF16 { uint16_t bits; };

// ----------------------------------------------------------------------------- AVX-512
DX_TARGET_AVX512_BEGIN
namespace v512 {

template <typename T> inline __m512 load16(const T* p);
template <> inline __m512 load16<float>(const float* p) { return _mm512_loadu_ps(p); }
template <> inline __m512 load16<F16>(const F16* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
template <> inline __m512 load16<BF16>(const BF16* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

template <typename T> inline void store16(T* p, __m512 v);
template <> inline void store16<float>(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
template <> inline void store16<F16>(F16* p, __m512 v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
// Round to nearest even like c10::BFloat16; NaN becomes the quiet NaN 0x7FC0. The
// bfloat16 bits in the low half of each 32-bit lane.
inline __m512i bf16_bits16(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __mmask16 number = _mm512_cmp_ps_mask(v, v, _CMP_ORD_Q);
  return _mm512_mask_srli_epi32(_mm512_set1_epi32(0x7FC0), number,
                                _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
}
template <> inline void store16<BF16>(BF16* p, __m512 v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(bf16_bits16(v)));
}

// Philox4x32-10 in vector lanes (philox.h): keep64 gives the keep bits of mask words
// 64 * block .. 64 * block + 63, bit q for word 64 * block + q.
struct Philox {
  struct Keys {
    __m512i k0[10], k1[10];
    __m512i thresh, c2, c3;
  };

  static void make_keys(const MaskParams& m, Keys& k) {
    uint32_t k0 = static_cast<uint32_t>(m.key), k1 = static_cast<uint32_t>(m.key >> 32);
    for (int r = 0; r < 10; ++r) {
      k.k0[r] = _mm512_set1_epi32(static_cast<int>(k0));
      k.k1[r] = _mm512_set1_epi32(static_cast<int>(k1));
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    k.thresh = _mm512_set1_epi32(static_cast<int>(m.threshold));
    k.c2 = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(m.base)));
    k.c3 = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(m.base >> 32)));
  }

  // Eight counters j0 .. j0+7 (j0 % 8 == 0, so the high word is shared) in 64-bit lanes,
  // value in the low 32 bits: one vpmuludq gives a whole 64-bit product (low word in
  // place, high word one vpshufd away); the upper halves may hold garbage, as vpmuludq
  // reads only the low 32 bits and xor keeps halves apart. w[0] = words 0..15 of the 32,
  // w[1] = words 16..31, in element order.
  static void philox32(const Keys& k, uint64_t j0, __m512i w[2]) {
    __m512i c0 = _mm512_add_epi64(_mm512_set1_epi64(static_cast<long long>(j0)), _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7));
    __m512i c1 = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(j0 >> 32)));
    __m512i c2 = k.c2, c3 = k.c3;
    const __m512i m0 = _mm512_set1_epi64(kPhiloxM0);
    const __m512i m1 = _mm512_set1_epi64(kPhiloxM1);
    for (int r = 0; r < 10; ++r) {
      const __m512i p0 = _mm512_mul_epu32(c0, m0);
      const __m512i p1 = _mm512_mul_epu32(c2, m1);
      // vpshufd moves each high word down (port 5; the multiply and shifts share port 0).
      c0 = _mm512_ternarylogic_epi64(_mm512_shuffle_epi32(p1, _MM_PERM_CDAB), c1, k.k0[r], 0x96);  // a ^ b ^ c
      c1 = p1;
      c2 = _mm512_ternarylogic_epi64(_mm512_shuffle_epi32(p0, _MM_PERM_CDAB), c3, k.k1[r], 0x96);
      c3 = p0;
    }
    const __m512i t01 = _mm512_mask_shuffle_epi32(c0, 0xAAAA, c1, _MM_PERM_CDAB);
    const __m512i t23 = _mm512_mask_shuffle_epi32(c2, 0xAAAA, c3, _MM_PERM_CDAB);
    w[0] = _mm512_permutex2var_epi64(t01, _mm512_setr_epi64(0, 8, 1, 9, 2, 10, 3, 11), t23);
    w[1] = _mm512_permutex2var_epi64(t01, _mm512_setr_epi64(4, 12, 5, 13, 6, 14, 7, 15), t23);
  }

  // Counters j0 .. j0+15 as two groups of eight, their rounds interleaved: four
  // independent multiply chains keep both vector ports busy.
  static void philox64(const Keys& k, uint64_t j0, __m512i w[4]) {
    const __m512i lanes = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
    __m512i a0 = _mm512_add_epi64(_mm512_set1_epi64(static_cast<long long>(j0)), lanes);
    __m512i b0 = _mm512_add_epi64(_mm512_set1_epi64(static_cast<long long>(j0 + 8)), lanes);
    __m512i a1 = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(j0 >> 32))), b1 = a1;
    __m512i a2 = k.c2, a3 = k.c3, b2 = k.c2, b3 = k.c3;
    const __m512i m0 = _mm512_set1_epi64(kPhiloxM0);
    const __m512i m1 = _mm512_set1_epi64(kPhiloxM1);
    for (int r = 0; r < 10; ++r) {
      const __m512i pa0 = _mm512_mul_epu32(a0, m0), pb0 = _mm512_mul_epu32(b0, m0);
      const __m512i pa1 = _mm512_mul_epu32(a2, m1), pb1 = _mm512_mul_epu32(b2, m1);
      a0 = _mm512_ternarylogic_epi64(_mm512_shuffle_epi32(pa1, _MM_PERM_CDAB), a1, k.k0[r], 0x96);
      b0 = _mm512_ternarylogic_epi64(_mm512_shuffle_epi32(pb1, _MM_PERM_CDAB), b1, k.k0[r], 0x96);
      a1 = pa1, b1 = pb1;
      a2 = _mm512_ternarylogic_epi64(_mm512_shuffle_epi32(pa0, _MM_PERM_CDAB), a3, k.k1[r], 0x96);
      b2 = _mm512_ternarylogic_epi64(_mm512_shuffle_epi32(pb0, _MM_PERM_CDAB), b3, k.k1[r], 0x96);
      a3 = pa0, b3 = pb0;
    }
    const __m512i lo = _mm512_setr_epi64(0, 8, 1, 9, 2, 10, 3, 11), hi = _mm512_setr_epi64(4, 12, 5, 13, 6, 14, 7, 15);
    const __m512i ta01 = _mm512_mask_shuffle_epi32(a0, 0xAAAA, a1, _MM_PERM_CDAB);
    const __m512i ta23 = _mm512_mask_shuffle_epi32(a2, 0xAAAA, a3, _MM_PERM_CDAB);
    const __m512i tb01 = _mm512_mask_shuffle_epi32(b0, 0xAAAA, b1, _MM_PERM_CDAB);
    const __m512i tb23 = _mm512_mask_shuffle_epi32(b2, 0xAAAA, b3, _MM_PERM_CDAB);
    w[0] = _mm512_permutex2var_epi64(ta01, lo, ta23);
    w[1] = _mm512_permutex2var_epi64(ta01, hi, ta23);
    w[2] = _mm512_permutex2var_epi64(tb01, lo, tb23);
    w[3] = _mm512_permutex2var_epi64(tb01, hi, tb23);
  }

  static uint64_t keep64(const Keys& k, uint64_t block) {
    __m512i w[4];
    philox64(k, block * 16, w);
    uint64_t r = 0;
    for (int q = 0; q < 4; ++q) r |= static_cast<uint64_t>(_mm512_cmpge_epu32_mask(w[q], k.thresh)) << (16 * q);
    return r;
  }
};

}  // namespace v512
DX_TARGET_END

// -------------------------------------------------------------------------------- AVX2
DX_TARGET_AVX2_BEGIN
namespace v256 {

template <typename T> inline __m256 load8(const T* p);
template <> inline __m256 load8<float>(const float* p) { return _mm256_loadu_ps(p); }
template <> inline __m256 load8<F16>(const F16* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
template <> inline __m256 load8<BF16>(const BF16* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

template <typename T> inline void store8(T* p, __m256 v);
template <> inline void store8<float>(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
template <> inline void store8<F16>(F16* p, __m256 v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
// As v512::bf16_bits16.
inline __m256i bf16_bits8(__m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
  const __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
  return _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), _mm256_castps_si256(nan));
}
template <> inline void store8<BF16>(BF16* p, __m256 v) {
  const __m256i r = bf16_bits8(v);
  // The eight 32-bit values are all < 2**16: packus keeps them.
  const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), packed);
}

// Lane q is all ones iff bit q of keep is set.
inline __m256i expand8(uint32_t keep) {
  const __m256i sel = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(static_cast<int>(keep & 0xFF)), sel), sel);
}
inline __m256i expand4(uint32_t keep) {
  const __m256i sel = _mm256_setr_epi64x(1, 2, 4, 8);
  return _mm256_cmpeq_epi64(_mm256_and_si256(_mm256_set1_epi64x(keep & 0xF), sel), sel);
}
// As v512::Philox.
struct Philox {
  struct Keys {
    uint32_t k0[10], k1[10];
    __m256i thresh, c2, c3;
  };

  static void make_keys(const MaskParams& m, Keys& k) {
    uint32_t k0 = static_cast<uint32_t>(m.key), k1 = static_cast<uint32_t>(m.key >> 32);
    for (int r = 0; r < 10; ++r) {
      k.k0[r] = k0;
      k.k1[r] = k1;
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    k.thresh = _mm256_set1_epi32(static_cast<int>(m.threshold));
    k.c2 = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(m.base)));
    k.c3 = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(m.base >> 32)));
  }

  static void mulhilo(__m256i a, __m256i m, __m256i* lo, __m256i* hi) {
    const __m256i even = _mm256_mul_epu32(a, m);
    const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
    *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
    *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  }

  // Words of counters j0 .. j0+7 (j0 % 8 == 0) in element order: w[q] = words 8q .. 8q+7.
  static void philox32(const Keys& k, uint64_t j0, __m256i w[4]) {
    __m256i c0 = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(j0))),
                                  _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256i c1 = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(j0 >> 32)));
    __m256i c2 = k.c2, c3 = k.c3;
    const __m256i m0 = _mm256_set1_epi32(static_cast<int>(kPhiloxM0));
    const __m256i m1 = _mm256_set1_epi32(static_cast<int>(kPhiloxM1));
    for (int r = 0; r < 10; ++r) {
      __m256i lo0, hi0, lo1, hi1;
      mulhilo(c0, m0, &lo0, &hi0);
      mulhilo(c2, m1, &lo1, &hi1);
      c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32(static_cast<int>(k.k0[r])));
      c1 = lo1;
      c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32(static_cast<int>(k.k1[r])));
      c3 = lo0;
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

  static uint64_t keep8(__m256i w, __m256i thresh) {
    // unsigned w >= t  <=>  max(w, t) == w
    const __m256i ge = _mm256_cmpeq_epi32(_mm256_max_epu32(w, thresh), w);
    return static_cast<uint64_t>(_mm256_movemask_ps(_mm256_castsi256_ps(ge)));
  }

  static uint64_t keep64(const Keys& k, uint64_t block) {
    uint64_t r = 0;
    for (int h = 0; h < 2; ++h) {
      __m256i w[4];
      philox32(k, block * 16 + 8 * h, w);
      for (int q = 0; q < 4; ++q) r |= keep8(w[q], k.thresh) << (32 * h + 8 * q);
    }
    return r;
  }
};

}  // namespace v256
DX_TARGET_END

}  // namespace
}  // namespace cpu
}  // namespace dropout_ext

#endif  // x86-64 with GCC/Clang

// Philox4x32-10 and the keep-mask arithmetic shared by every compiled backend.
//
// This header is included by the CPU kernels (plain C++) and by the CUDA kernels
// (nvcc), so the GPU runs exactly the arithmetic the CPU tests exercise. It has no
// torch dependency on purpose: the SIMD translation units include it too, and they
// must not pull in inline ATen code compiled for a wider instruction set.
//
// Mask definition (SPEC section 3): element i (logical row-major index) uses word
// i % 4 of philox4x32_10(counter = (j lo, j hi, base lo, base hi), key = (key lo, key hi))
// with j = i / 4, and is kept iff word >= floor(p * 2**32).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define DX_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define DX_HOST_DEVICE inline
#endif

namespace dropout_ext {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

struct Philox4 {
  uint32_t v[4];
};

DX_HOST_DEVICE uint32_t mulhilo32(uint32_t a, uint32_t b, uint32_t* hi) {
#if defined(__CUDA_ARCH__)
  *hi = __umulhi(a, b);
  return a * b;
#else
  const uint64_t product = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(product >> 32);
  return static_cast<uint32_t>(product);
#endif
}

// Ten rounds, nine key bumps: Random123's philox4x32_R(10, ...).
DX_HOST_DEVICE Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                     uint32_t k0, uint32_t k1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, hi1;
    const uint32_t lo0 = mulhilo32(kPhiloxM0, c0, &hi0);
    const uint32_t lo1 = mulhilo32(kPhiloxM1, c2, &hi1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// Everything a kernel needs to decide "keep" for a logical index and to scale.
struct MaskParams {
  uint64_t key = 0;
  uint64_t base = 0;
  uint32_t threshold = 0;  // keep iff word >= threshold
  bool drop_all = false;   // p == 1: nothing is drawn, every element is dropped
  float scale_f = 1.f;     // factor for kept elements, float32 arithmetic types
  double scale_d = 1.0;    // the same factor for float64
};

// floor(p * 2**32) computed in float64, for 0 <= p < 1.
DX_HOST_DEVICE uint32_t keep_threshold(double p) {
  return static_cast<uint32_t>(floor(p * 4294967296.0));
}

DX_HOST_DEVICE MaskParams make_mask_params(uint64_t key, uint64_t base, double p,
                                           bool scale_train) {
  MaskParams m;
  m.key = key;
  m.base = base;
  m.drop_all = p >= 1.0;
  m.threshold = m.drop_all ? 0u : keep_threshold(p);
  // For p == 1 nothing is kept, so the keep factor is never used; keep it finite.
  m.scale_d = (scale_train && !m.drop_all) ? 1.0 / (1.0 - p) : 1.0;
  m.scale_f = static_cast<float>(m.scale_d);
  return m;
}

// The four random words of counter block j (elements 4j .. 4j+3).
DX_HOST_DEVICE Philox4 philox_block(const MaskParams& m, uint64_t j) {
  return philox4x32_10(static_cast<uint32_t>(j), static_cast<uint32_t>(j >> 32),
                       static_cast<uint32_t>(m.base), static_cast<uint32_t>(m.base >> 32),
                       static_cast<uint32_t>(m.key), static_cast<uint32_t>(m.key >> 32));
}

// Keep decision for one logical index (slow path: one Philox call per element).
DX_HOST_DEVICE bool keep_element(const MaskParams& m, uint64_t i) {
  if (m.drop_all) return false;
  return philox_block(m, i >> 2).v[i & 3] >= m.threshold;
}

}  // namespace dropout_ext

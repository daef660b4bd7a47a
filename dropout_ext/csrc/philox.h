// Philox4x32-10 and the keep-mask arithmetic shared by every compiled backend.
//
// This header is included by the CPU kernels (plain C++) and by the CUDA kernels
// (nvcc), so the GPU runs exactly the arithmetic the CPU tests exercise. It has no
// torch dependency on purpose: the SIMD translation units include it too, and they
// must not pull in inline ATen code compiled for a wider instruction set.
//
// Mask definition (docs/design.md, "The mask"): element i (logical row-major index) uses word
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

// How kept elements are scaled (the `kind` argument of the ops).
enum class Kind : int {
  Inverted = 0,  // out = x * keep / (1 - p): torch's dropout ("inverted" dropout)
  Vanilla = 1,   // out = x * keep: scale_train=False (Srivastava et al. 2014, Caffe's scale_train: false)
  Alpha = 2,     // out = x * (keep * a) + (keep ? alpha*a*p : alpha*a*p - alpha*a): SELU's alpha dropout
};

// SELU's negative saturation, scale * alpha (torch's alpha dropout constant).
constexpr double kSeluAlpha = 1.7580993408473766;

// Everything a kernel needs to decide "keep" for a mask word and to compute the output.
// Per element: f = keep ? scale : 0 and s = keep ? keep_shift : drop_shift; out = x * f + s
// for Kind::Alpha, out = x * f otherwise (a dropped element is x * 0: NaN stays NaN).
struct MaskParams {
  uint64_t key = 0;
  uint64_t base = 0;
  uint32_t threshold = 0;  // keep iff word >= threshold
  bool drop_all = false;   // p == 1: nothing is drawn, every element is dropped
  bool keep_all = false;   // p == 0: threshold 0, every word keeps; nothing is drawn
  float scale_f = 1.f;     // factor for kept elements, float32 arithmetic types
  double scale_d = 1.0;    // the same factor for float64
  float keep_shift_f = 0.f, drop_shift_f = 0.f;  // Kind::Alpha only
  double keep_shift_d = 0.0, drop_shift_d = 0.0;
};

// floor(p * 2**32) computed in float64, for 0 <= p < 1.
DX_HOST_DEVICE uint32_t keep_threshold(double p) {
  return static_cast<uint32_t>(floor(p * 4294967296.0));
}

// The factor for kept elements of `kind` (backward multiplies by the same factor).
DX_HOST_DEVICE double keep_scale(double p, Kind kind) {
  if (p >= 1.0) return 0.0;  // nothing is kept; keep the factor finite
  switch (kind) {
    case Kind::Inverted: return 1.0 / (1.0 - p);
    case Kind::Vanilla: return 1.0;
    case Kind::Alpha: return 1.0 / sqrt((kSeluAlpha * kSeluAlpha * p + 1.0) * (1.0 - p));
  }
  return 1.0;
}

// The rounding follows ATen's alpha dropout, which the Python API computed before:
// b = (keep - 1) * (alpha * a) + alpha * a * p in the arithmetic type, each constant
// rounded to it first, and out = x * (keep * a) + b.
template <typename A>
DX_HOST_DEVICE void alpha_shifts(double p, double a, A* keep_shift, A* drop_shift) {
  const A alpha_a = static_cast<A>(kSeluAlpha * a);
  const A alpha_a_p = static_cast<A>(kSeluAlpha * a * p);
  *keep_shift = static_cast<A>(A(0) * alpha_a) + alpha_a_p;
  *drop_shift = static_cast<A>(A(-1) * alpha_a) + alpha_a_p;
}

DX_HOST_DEVICE MaskParams make_mask_params(uint64_t key, uint64_t base, double p, Kind kind) {
  MaskParams m;
  m.key = key;
  m.base = base;
  m.drop_all = p >= 1.0;
  m.threshold = m.drop_all ? 0u : keep_threshold(p);
  m.keep_all = !m.drop_all && m.threshold == 0u;
  m.scale_d = keep_scale(p, kind);
  m.scale_f = static_cast<float>(m.scale_d);
  if (kind == Kind::Alpha) {
    if (m.drop_all) {
      // p == 1: out = x * 0 (the API returns input * 0 before reaching a kernel); -0.0
      // keeps the sign of x * 0.
      m.keep_shift_f = m.drop_shift_f = -0.f;
      m.keep_shift_d = m.drop_shift_d = -0.0;
    } else {
      alpha_shifts<float>(p, m.scale_d, &m.keep_shift_f, &m.drop_shift_f);
      alpha_shifts<double>(p, m.scale_d, &m.keep_shift_d, &m.drop_shift_d);
    }
  }
  return m;
}

// The four random words of counter block j (elements 4j .. 4j+3).
DX_HOST_DEVICE Philox4 philox_block(const MaskParams& m, uint64_t j) {
  return philox4x32_10(static_cast<uint32_t>(j), static_cast<uint32_t>(j >> 32),
                       static_cast<uint32_t>(m.base), static_cast<uint32_t>(m.base >> 32),
                       static_cast<uint32_t>(m.key), static_cast<uint32_t>(m.key >> 32));
}

// Keep decision for mask word i (slow path: one Philox call per word).
DX_HOST_DEVICE bool keep_element(const MaskParams& m, uint64_t i) {
  if (m.drop_all) return false;
  if (m.keep_all) return true;
  return philox_block(m, i >> 2).v[i & 3] >= m.threshold;
}

}  // namespace dropout_ext

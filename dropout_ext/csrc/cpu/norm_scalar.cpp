// Portable path of the fused norm ops: norm_engine.inc on one lane of plain C++ (c10's
// conversions round as torch does). The SIMD paths are tested against the same reference.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "norm_kernels.h"
#include "philox_scalar.h"

namespace dropout_ext {
namespace cpu {
namespace {
namespace scalar_norm {

using F16 = c10::Half;
using BF16 = c10::BFloat16;
using Vec = PhiloxScalar;

template <typename A>
struct Lanes {
  using R = A;
  static constexpr int W = 1;
  static R zero() { return A(0); }
  static R set1(A v) { return v; }
  static R add(R a, R b) { return a + b; }
  static R sub(R a, R b) { return a - b; }
  static R mul(R a, R b) { return a * b; }
  static R fma(R a, R b, R c) { return a * b + c; }
  static R fnmadd(R a, R b, R c) { return c - a * b; }
  static A hsum(R v) { return v; }
  static R keep(uint32_t bits, A s) { return (bits & 1u) ? s : A(0); }
  static R first(R v, int n) { return n > 0 ? v : A(0); }
  template <typename T>
  static R load(const T* p) {
    return static_cast<A>(*p);
  }
  template <typename T>
  static R load_n(const T* p, int) {
    return static_cast<A>(*p);
  }
  template <typename T>
  static R store(T* p, R v) {
    *p = static_cast<T>(v);
    return static_cast<A>(*p);
  }
  template <typename T>
  static R store_n(T* p, R v, int) {
    return store(p, v);
  }
};

#include "norm_engine.inc"

}  // namespace scalar_norm
}  // namespace

void norm_forward_scalar(const NormArgs& a, const NormParams& p, int64_t r0, int64_t r1, void* row) {
  scalar_norm::norm_forward_rows(a, p, r0, r1, row);
}
void norm_backward_scalar(const NormArgs& a, const NormParams& p, int64_t r0, int64_t r1, void* row, void* gw,
                          void* gb, void* gib) {
  scalar_norm::norm_backward_rows(a, p, r0, r1, row, gw, gb, gib);
}

}  // namespace cpu
}  // namespace dropout_ext

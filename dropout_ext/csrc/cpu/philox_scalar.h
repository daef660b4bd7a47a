// The portable path's Philox blocks (plain C++, one philox.h block per four words), shared
// by the scalar units (kernels_scalar.cpp, norm_scalar.cpp) as simd.h shares the SIMD ones.
// Only units compiled without `#pragma GCC target` include it.
#pragma once

#include <cstdint>

#include "../philox.h"

namespace dropout_ext {
namespace cpu {

struct PhiloxScalar {
  struct Keys {
    MaskParams m;
  };
  static void make_keys(const MaskParams& m, Keys& k) { k.m = m; }

  // Keep bits of mask words 64 * block .. 64 * block + 63, bit q for word 64 * block + q.
  static uint64_t keep64(const Keys& k, uint64_t block) {
    uint64_t r = 0;
    for (int c = 0; c < 16; ++c) {
      const Philox4 w = philox_block(k.m, block * 16 + c);
      for (int q = 0; q < 4; ++q) r |= static_cast<uint64_t>(w.v[q] >= k.m.threshold) << (4 * c + q);
    }
    return r;
  }
};

}  // namespace cpu
}  // namespace dropout_ext

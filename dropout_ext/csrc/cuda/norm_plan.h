// The host's side of the fused dropout + add + norm kernels (norm_kernel.cuh): the plan of
// a call (group size, row cache, where the backward's column sums live) and the dtype
// dispatch, for a launcher L shared by the GPU (norm_launch.cu) and the emulator
// (../testing/norm_emulation.cpp). L provides
//   L::smem_budget()                               shared memory a block may take
//   L::max_blocks<T, TH, BWD>(plan)                the resident blocks of that kernel (a cap
//                                                  on the grid: blocks loop over rows)
//   L::fwd<T, TH>(blocks, a, plan)
//   L::bwd<T, TH>(blocks, a, plan, partials)
//   L::colsum<A>(blocks, a, plan, partials)
//   L::scratch<A>(elems)                           the partial sums (alive until L is destroyed)
//   L::bits_out_ready(bits, bytes)                 bits_out zeroed before atomics OR into it
//   L::rng(a)                                      rows == 0: only (key, base) to rng_out
// Plain C++, compiled by nvcc and by g++.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>

#include "../norm_args.h"
#include "norm_kernel.cuh"

namespace dropout_ext {
namespace cuda {

inline int64_t norm_round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

inline int64_t dtype_size(DType t) {
  switch (t) {
    case DType::Float16:
    case DType::BFloat16: return 2;
    case DType::Float32: return 4;
    case DType::Float64: return 8;
  }
  return 4;
}

// The plan of a call. tsize, hsize, asize: bytes of the input's, h's and acc's types.
// budget: shared memory a block may take (NormPlan::smem never exceeds it).
inline NormPlan norm_plan(const NormArgs& a, bool backward, int64_t budget) {
  const int64_t tsize = dtype_size(a.dtype);
  const int64_t hsize = a.h_f32 ? 4 : tsize;
  const int64_t asize = a.dtype == DType::Float64 ? 8 : 4;
  const int64_t rsize = a.res_f32 ? 4 : tsize;
  const int64_t psize = a.param_f32 ? 4 : tsize;
  NormPlan p;
  p.units = (a.hidden + kUnit - 1) / kUnit;
  p.hpad = p.units * kUnit;
  if (p.units <= kNormWarpUnits) {
    p.group = 32;
    p.rows_per_block = kNormWarpRows;
  } else {
    const int64_t want = norm_round_up((p.units + kNormUnitsPerThread - 1) / kNormUnitsPerThread, 32);
    p.group = static_cast<int>(std::min<int64_t>(norm_max_threads(asize), std::max<int64_t>(64, want)));
    p.rows_per_block = 1;
  }
  p.threads = p.group * p.rows_per_block;
  p.kmax = (p.units + p.group - 1) / p.group;
  p.bits_plain = a.hidden % kUnit == 0;

  // Vector accesses: every row of every operand on a Unit boundary of its type.
  auto row_ok = [](const void* ptr, int64_t rs, int64_t size) {
    return ptr == nullptr || (aligned(ptr, size * kUnit) && rs % kUnit == 0);
  };
  bool vec = a.hidden % kUnit == 0 && row_ok(a.weight, 0, psize) && row_ok(a.bias, 0, psize);
  if (!backward) {
    vec = vec && row_ok(a.x, a.x_rs, tsize) && row_ok(a.residual, a.res_rs, rsize) &&
          row_ok(a.input_bias, 0, tsize) && row_ok(a.out, 0, tsize) && row_ok(a.h, 0, hsize);
  } else {
    vec = vec && row_ok(a.grad_out, a.dy_rs, tsize) && row_ok(a.grad_h, a.dh_rs, hsize) && row_ok(a.h, 0, hsize) &&
          row_ok(a.grad_input, 0, tsize) && row_ok(a.grad_h_total, 0, hsize);
  }
  p.vec = vec;

  // Shared memory: the reduction scratch, then (backward) the column sums, then the row
  // cache, each where the budget still holds it.
  const int64_t R = p.rows_per_block;
  int64_t used = kNormRedBytes;
  if (backward) {
    if (a.grad_weight) p.sum_w = p.nsums++;
    if (a.grad_bias) p.sum_b = p.nsums++;
    if (a.grad_input_bias) p.sum_ib = p.nsums++;
    const int64_t acc_bytes = norm_round_up(R * p.nsums * p.hpad * asize, 64);
    if (p.nsums > 0 && used + acc_bytes <= budget) {
      p.acc_smem = true;
      p.acc_off = used;
      used += acc_bytes;
    }
    const int64_t dy_bytes = norm_round_up(R * p.hpad * tsize, 64);
    const int64_t h_bytes = norm_round_up(R * p.hpad * hsize, 64);
    if (p.units > 0 && used + dy_bytes + h_bytes <= budget) {
      p.cache = true;
      p.cache_off = used;
      p.cache2_off = used + dy_bytes;
      used += dy_bytes + h_bytes;
    }
  } else {
    const int64_t h_bytes = norm_round_up(R * p.hpad * hsize, 64);
    if (p.units > 0 && used + h_bytes <= budget) {
      p.cache = true;
      p.cache_off = used;
      used += h_bytes;
    }
  }
  p.smem = used;
  return p;
}

inline int64_t norm_grid(const NormArgs& a, const NormPlan& p, int64_t resident) {
  const int64_t blocks = (a.rows + p.rows_per_block - 1) / p.rows_per_block;
  return std::max<int64_t>(1, std::min<int64_t>({blocks, resident, int64_t(0x7FFFFFFF)}));
}

template <class L, typename T, typename TH>
void launch_norm_forward(L& l, const NormArgs& a) {
  const NormPlan p = norm_plan(a, false, l.smem_budget());
  if (a.bits_out && !p.bits_plain) l.bits_out_ready(a.bits_out, (a.rows * a.hidden + 7) / 8);
  const int64_t blocks = norm_grid(a, p, l.template max_blocks<T, TH, false>(p));
  l.template fwd<T, TH>(blocks, a, p);
}

template <class L, typename T, typename TH>
void launch_norm_backward(L& l, const NormArgs& a) {
  using A = at::opmath_type<T>;
  NormPlan p = norm_plan(a, true, l.smem_budget());
  // rows == 0: no row kernel, and the column sums are sums of nothing (0)
  const int64_t blocks = a.rows > 0 ? norm_grid(a, p, l.template max_blocks<T, TH, true>(p)) : 0;
  p.slots = p.nsums == 0 ? 0 : p.acc_smem ? blocks : blocks * p.rows_per_block;
  const int64_t cols = p.nsums * p.hpad;
  A* partials = p.slots * cols > 0 ? l.template scratch<A>(p.slots * cols) : nullptr;
  if (blocks > 0) l.template bwd<T, TH>(blocks, a, p, partials);
  if (cols > 0) l.template colsum<A>((cols + 31) / 32, a, p, partials);
}

// The kernels for the input's dtype and h's (float32 with residual_in_fp32 for a 16-bit
// input, else the input's).
template <class L, bool BWD, typename T>
void norm_for_h(L& l, const NormArgs& a) {
  if constexpr (sizeof(T) == 2) {
    if (a.h_f32) return BWD ? launch_norm_backward<L, T, float>(l, a) : launch_norm_forward<L, T, float>(l, a);
  }
  BWD ? launch_norm_backward<L, T, T>(l, a) : launch_norm_forward<L, T, T>(l, a);
}

template <class L, bool BWD>
void run_norm(L& l, const NormArgs& a) {
  if (!BWD && a.rows == 0) {
    if (a.rng_out) l.rng(a);  // nothing to compute, but the drawn (key, base) is owed
    return;
  }
  switch (a.dtype) {
    case DType::Float16: return norm_for_h<L, BWD, c10::Half>(l, a);
    case DType::BFloat16: return norm_for_h<L, BWD, c10::BFloat16>(l, a);
    case DType::Float32: return norm_for_h<L, BWD, float>(l, a);
    case DType::Float64: return norm_for_h<L, BWD, double>(l, a);
  }
}

}  // namespace cuda
}  // namespace dropout_ext

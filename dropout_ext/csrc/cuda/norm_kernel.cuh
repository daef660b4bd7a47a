// The fused dropout + residual add + LayerNorm / RMSNorm kernels (../norm_args.h): the
// forward, the backward, and the backward's column sums. The host's side (the plan, the
// grid and the dtype dispatch) is in norm_plan.h.
//
// Rows are handled by groups of threads: a warp per row when rows are short (at most
// kNormWarpUnits units of 8 elements; kNormWarpRows rows per block), else the whole block
// (64 to norm_max_threads threads, about kNormUnitsPerThread units each). Thread `lane` of
// a group takes the units u = lane + k * group of its row, k < kmax, every pass over the
// row in the same order, so what it keeps between passes (a row cache, the column sums)
// is its own: it reads back only what it wrote, and no barrier guards those.
// Blocks loop over rows (grid stride), so the backward's column sums are summed per group
// over many rows before they leave the block.
//
// Forward, per row:
//   pass 1  x, residual, input_bias -> keep bits (Philox words w = global_row * hidden + c,
//           kernel_common.cuh), h written once (rounded to h's type) to global memory and,
//           when the group's rows fit the shared memory budget, to the group's row cache;
//           the thread's sum of h (LayerNorm) or of h^2 (RMSNorm)
//   reduce  over the group (warp shuffles, then shared memory across the block's warps)
//   pass 2  LayerNorm only: sum of (h - mean)^2 over the cached (or re-read) h, reduced
//   pass 3  out = (h - mean) * rstd * w + b from the cached (or re-read) h
// Backward, per row:
//   pass 1  dy, h (cached like the forward's h when they fit) -> the row sums of g = dy * w
//           and g * xhat, and the column sums of dy * xhat and dy
//   reduce  both sums at once
//   pass 2  dh = rstd * (g - xhat * mean(g * xhat) - mean(g)) + grad_h, grad_h_total,
//           grad_input = dh * f (keep from bits_in or drawn again), the column sum of dh * f
// The column sums of a group live in shared memory when they fit (else in its slot of the
// partial sums in global memory); at the end a block writes them to its slot of the
// partial sums, and norm_colsum_body adds the slots up in a fixed order: deterministic,
// no float atomics.
//
// Every operand row is read with 16-byte vector accesses when all of them allow it
// (hidden % 8 == 0 and every row start on a Unit boundary: NormPlan::vec), element by
// element otherwise. The row cache and the column sums are always accessed by Unit.
//
// Arithmetic in acc (float, double for float64) in the reference's order
// (../../_reference.py, dropout_add_norm): h = residual + ((x + input_bias) * f), each
// operation rounded (the build's --fmad=false / -ffp-contract=off), so h is bit for bit
// dropout_add's.
#pragma once

#include <cmath>
#include <type_traits>

#include "../norm_args.h"
#include "kernel_common.cuh"

namespace dropout_ext {
namespace cuda {

// A block's threads at most (block mode), its kernels' __launch_bounds__: 512 (128 registers
// a thread), 256 for float64 (whose kernels need more than 128 registers without spilling).
constexpr int kNormMaxThreads = 512;
constexpr int kNormMaxThreads64 = 256;
constexpr int norm_max_threads(int64_t acc_bytes) { return acc_bytes == 8 ? kNormMaxThreads64 : kNormMaxThreads; }
constexpr int kNormWarpRows = 8;            // warp mode: rows (warps) per block
constexpr int64_t kNormWarpUnits = 64;      // warp mode up to this many units per row (512 elements)
constexpr int64_t kNormUnitsPerThread = 2;  // block mode: the group size aims at this many units per thread
constexpr int64_t kNormRedBytes = 2 * 32 * 8;  // the reduction scratch: two sums per warp, in double
// Shared memory a block may take for its row cache and column sums (the launcher caps it by
// the device's opt-in limit).
constexpr int64_t kNormSmemBudget = 96 * 1024;

// What the host tells the norm kernels beyond NormArgs (norm_plan.h).
struct NormPlan {
  int group = 32;            // threads per row: 32 (a warp) or the whole block
  int rows_per_block = 1;    // groups per block: kNormWarpRows in warp mode, else 1
  int threads = 32;          // group * rows_per_block
  int64_t units = 0;         // units of kUnit elements per row: ceil(hidden / 8)
  int64_t hpad = 0;          // units * kUnit: a row's slot in the cache and the column sums
  int64_t kmax = 0;          // units per thread: ceil(units / group)
  bool vec = false;          // every operand row starts on a Unit boundary and hidden % 8 == 0
  bool bits_plain = false;   // hidden % 8 == 0: each unit's keep bits are one whole byte
  bool cache = false;        // forward: h; backward: dy and h; per group in shared memory
  bool acc_smem = false;     // backward: column sums in shared memory, else in the partial sums
  int nsums = 0;             // backward: column sums wanted, at index sum_w, sum_b, sum_ib (-1: not)
  int sum_w = -1, sum_b = -1, sum_ib = -1;
  int64_t smem = 0;          // dynamic shared memory bytes
  int64_t cache_off = 0;     // byte offsets in it (the reduction scratch is at 0)
  int64_t cache2_off = 0;    // backward: h's cache (dy's at cache_off)
  int64_t acc_off = 0;
  int64_t slots = 0;         // backward: slots of partial sums (nsums * hpad each)
};

// ------------------------------------------------------------------ element access

// keep8 (kernel_common.cuh) with one Philox block live at a time: the bits of words w .. w+7
// from the two or three blocks that cover them, each reduced to its bits before the next is
// drawn (fewer registers than holding the twelve words).
DX_DEV uint32_t keep8_lean(const MaskParams& m, uint64_t w) {
  if (m.drop_all) return 0u;
  if (m.keep_all) return 0xFFu;
  const uint64_t j = w >> 2;
  const int s = static_cast<int>(w & 3);
  uint32_t r = 0;
#if defined(__CUDA_ARCH__)
#pragma unroll 1
#endif
  for (int b = 0; b < 3; ++b) {
    if (b == 2 && s == 0) break;
    const Philox4 blk = philox_block(m, j + b);
    uint32_t k4 = 0;
DX_UNROLL
    for (int q = 0; q < 4; ++q) k4 |= static_cast<uint32_t>(blk.v[q] >= m.threshold) << q;
    const int at = 4 * b - s;  // bit of word 0 of this block in the result
    r |= at >= 0 ? k4 << at : k4 >> -at;
  }
  return r & 0xFFu;
}

// 8 elements of type E at p as A: one vector access when vec, else the first n (the rest 0).
template <typename E, typename A, class C>
DX_DEV void load8(const C& c, const E* p, bool vec, int n, A (&v)[kUnit]) {
  if (vec) {
    const Unit<E> u = c.load_unit(p);
DX_UNROLL
    for (int q = 0; q < kUnit; ++q) v[q] = static_cast<A>(u.v[q]);
  } else {
DX_UNROLL
    for (int q = 0; q < kUnit; ++q) v[q] = q < n ? static_cast<A>(p[q]) : A(0);
  }
}

// An operand stored as T or as float (f32): residual with residual_in_fp32, the parameters.
template <typename T, typename A, class C>
DX_DEV void load8_tf(const C& c, const void* base, bool f32, int64_t off, bool vec, int n, A (&v)[kUnit]) {
  if (!std::is_same<T, float>::value && f32) load8(c, static_cast<const float*>(base) + off, vec, n, v);
  else load8(c, static_cast<const T*>(base) + off, vec, n, v);
}

template <typename E, typename A, class C>
DX_DEV void store8(const C& c, E* p, bool vec, int n, const A (&v)[kUnit]) {
  if (vec) {
    Unit<E> u;
DX_UNROLL
    for (int q = 0; q < kUnit; ++q) u.v[q] = static_cast<E>(v[q]);
    c.store_unit(p, u);
  } else {
DX_UNROLL
    for (int q = 0; q < kUnit; ++q)
      if (q < n) p[q] = static_cast<E>(v[q]);
  }
}

template <typename A>
DX_DEV A norm_rsqrt(A v) {
#if defined(__CUDA_ARCH__)
  return A(1) / sqrt(v);  // IEEE sqrt and division (no fast math)
#else
  return A(1) / std::sqrt(v);
#endif
}

// The sum of v (N values at once) over the thread's group, the same bits in every thread:
// an xor butterfly over the warp, then (block mode) the warps' sums from shared memory in
// warp order. Every thread of the group calls it.
template <int N, typename A, class C>
DX_DEV void group_sum(const C& c, int group, A (&v)[N], A* red) {
DX_UNROLL
  for (int o = 16; o > 0; o >>= 1)
DX_UNROLL
    for (int i = 0; i < N; ++i) v[i] = v[i] + c.shfl_xor(v[i], o);
  if (group > 32) {
    const int warp = c.tid() >> 5;
    if ((c.tid() & 31) == 0)
DX_UNROLL
      for (int i = 0; i < N; ++i) red[i * 32 + warp] = v[i];
    c.sync();
DX_UNROLL
    for (int i = 0; i < N; ++i) {
      A s = red[i * 32];
      for (int w = 1; w < group / 32; ++w) s = s + red[i * 32 + w];
      v[i] = s;
    }
    c.sync();  // before the next call writes red
  }
}

// Where a thread stands in its group, and its group's first row and row step.
struct NormLane {
  int lane, grp;
  int64_t first, step;
  template <class C>
  DX_DEV NormLane(const C& c, const NormPlan& p) {
    lane = c.tid() % p.group;
    grp = c.tid() / p.group;
    first = c.bid() * p.rows_per_block + grp;
    step = c.nblocks() * p.rows_per_block;
  }
};

// ------------------------------------------------------------------ forward

template <typename T, typename TH, class C>
DX_DEV void norm_fwd_body(const C& c, const NormArgs& a, const NormPlan& p, unsigned char* smem) {
  using A = at::opmath_type<T>;
  // Units whose loads are issued together, before their Philox rounds.
  constexpr int KB = 2;
  const MaskParams m = resolve_mask(c, a);
  const A scale = sizeof(A) == 8 ? static_cast<A>(m.scale_d) : static_cast<A>(m.scale_f);
  const NormLane L(c, p);
  const int64_t H = a.hidden;
  const A n_div = static_cast<A>(H > 0 ? H : 1);
  const A eps = static_cast<A>(a.eps);
  A* red = reinterpret_cast<A*>(smem);
  TH* cache = p.cache ? reinterpret_cast<TH*>(smem + p.cache_off) + L.grp * p.hpad : nullptr;
  const T* x = static_cast<const T*>(a.x);
  const T* ib = static_cast<const T*>(a.input_bias);
  TH* h = static_cast<TH*>(a.h);
  T* out = static_cast<T*>(a.out);
  A* mean_out = static_cast<A*>(a.mean);
  A* rstd_out = static_cast<A*>(a.rstd);
  const bool ln = !a.rms;
  const bool vec = p.vec;

  for (int64_t r = L.first; r < a.rows; r += L.step) {
    const uint64_t w0 = static_cast<uint64_t>(a.rowmap.global_row(r)) * static_cast<uint64_t>(H);
    const int64_t b0 = r * H;  // bit (and h / out element) index of the row's first element
    const T* xr = x + r * a.x_rs;
    const int64_t res_off = r * a.res_rs;
    TH* hr = h + b0;

    // Pass 1: h, its keep bits, the thread's sum of h (LayerNorm) or h^2 (RMSNorm).
    A s1 = 0;
    for (int64_t k0 = 0; k0 < p.kmax; k0 += KB) {
      A xv[KB][kUnit], rv[KB][kUnit];
DX_UNROLL
      for (int i = 0; i < KB; ++i) {
        const int64_t u = L.lane + (k0 + i) * p.group;
        if (k0 + i < p.kmax && u < p.units) {
          const int nv = static_cast<int>(H - u * kUnit < kUnit ? H - u * kUnit : kUnit);
          load8(c, xr + u * kUnit, vec, nv, xv[i]);
          if (a.residual) load8_tf<T>(c, a.residual, a.res_f32, res_off + u * kUnit, vec, nv, rv[i]);
        }
      }
DX_UNROLL
      for (int i = 0; i < KB; ++i) {
        const int64_t u = L.lane + (k0 + i) * p.group;
        if (!(k0 + i < p.kmax && u < p.units)) continue;
        const int64_t c0 = u * kUnit;
        const int nv = static_cast<int>(H - c0 < kUnit ? H - c0 : kUnit);
        uint32_t keep = keep8_lean(m, w0 + static_cast<uint64_t>(c0));
        if (nv < kUnit) keep &= (1u << nv) - 1u;
        if (a.bits_out) {
          if (p.bits_plain) a.bits_out[(b0 + c0) >> 3] = static_cast<uint8_t>(keep);
          else or_bits(c, a.bits_out, b0 + c0, keep);
        }
        A bv[kUnit];
        if (ib) load8(c, ib + c0, vec, nv, bv);
        A hv[kUnit];
        Unit<TH> hu;
DX_UNROLL
        for (int q = 0; q < kUnit; ++q) {
          A v = xv[i][q];
          if (ib) v = v + bv[q];
          v = v * (((keep >> q) & 1u) ? scale : A(0));
          if (a.residual) v = rv[i][q] + v;
          hu.v[q] = static_cast<TH>(v);
          hv[q] = static_cast<A>(hu.v[q]);
          if (q < nv) s1 = s1 + (ln ? hv[q] : hv[q] * hv[q]);
        }
        store8(c, hr + c0, vec, nv, hv);
        if (cache) c.store_unit(cache + c0, hu);
      }
    }
    A t1[1] = {s1};
    group_sum(c, p.group, t1, red);
    A mean = 0, rstd;
    if (ln) {
      mean = t1[0] / n_div;
      // Pass 2 (LayerNorm): the sum of squares about the mean.
      A s2 = 0;
      for (int64_t k = 0; k < p.kmax; ++k) {
        const int64_t u = L.lane + k * p.group;
        if (u >= p.units) break;
        const int64_t c0 = u * kUnit;
        const int nv = static_cast<int>(H - c0 < kUnit ? H - c0 : kUnit);
        A hv[kUnit];
        if (cache) load8(c, cache + c0, true, kUnit, hv);
        else load8(c, hr + c0, vec, nv, hv);
DX_UNROLL
        for (int q = 0; q < kUnit; ++q) {
          const A d = hv[q] - mean;
          if (q < nv) s2 = s2 + d * d;
        }
      }
      A t2[1] = {s2};
      group_sum(c, p.group, t2, red);
      rstd = norm_rsqrt(t2[0] / n_div + eps);
    } else {
      rstd = norm_rsqrt(t1[0] / n_div + eps);
    }
    // Pass 3: out.
    T* outr = out + b0;
    for (int64_t k = 0; k < p.kmax; ++k) {
      const int64_t u = L.lane + k * p.group;
      if (u >= p.units) break;
      const int64_t c0 = u * kUnit;
      const int nv = static_cast<int>(H - c0 < kUnit ? H - c0 : kUnit);
      A hv[kUnit], wv[kUnit], bv[kUnit];
      if (cache) load8(c, cache + c0, true, kUnit, hv);
      else load8(c, hr + c0, vec, nv, hv);
      if (a.weight) load8_tf<T>(c, a.weight, a.param_f32, c0, vec, nv, wv);
      if (ln && a.bias) load8_tf<T>(c, a.bias, a.param_f32, c0, vec, nv, bv);
      A y[kUnit];
DX_UNROLL
      for (int q = 0; q < kUnit; ++q) {
        A v = ln ? (hv[q] - mean) * rstd : hv[q] * rstd;
        if (a.weight) v = v * wv[q];
        if (ln && a.bias) v = v + bv[q];
        y[q] = v;
      }
      store8(c, outr + c0, vec, nv, y);
    }
    if (L.lane == 0) {
      if (mean_out) mean_out[r] = mean;
      rstd_out[r] = rstd;
    }
  }
}

// ------------------------------------------------------------------ backward

// The group's column sums: nsums rows of hpad elements (acc), in shared memory or in its
// slot of the partial sums.
template <typename A, class C>
DX_DEV void acc_add(const C& c, A* acc, int64_t c0, const A (&v)[kUnit]) {
  Unit<A> s = c.load_unit(acc + c0);
DX_UNROLL
  for (int q = 0; q < kUnit; ++q) s.v[q] = s.v[q] + v[q];
  c.store_unit(acc + c0, s);
}

// partials: slots of nsums * hpad sums (NormPlan::slots).
template <typename T, typename TH, class C>
DX_DEV void norm_bwd_body(const C& c, const NormArgs& a, const NormPlan& p, unsigned char* smem,
                          at::opmath_type<T>* partials) {
  using A = at::opmath_type<T>;
  constexpr int KB = 1;  // 2 spills registers within 128 (dy and h of two units, the column sums)
  const bool drawn = a.bits_in == nullptr;
  const MaskParams m = resolve_mask(c, a);
  const A scale = sizeof(A) == 8 ? static_cast<A>(m.scale_d) : static_cast<A>(m.scale_f);
  const NormLane L(c, p);
  const int64_t H = a.hidden;
  const A n_div = static_cast<A>(H > 0 ? H : 1);
  const bool ln = !a.rms;
  const bool vec = p.vec;
  A* red = reinterpret_cast<A*>(smem);
  const int64_t slot_elems = p.nsums * p.hpad;
  A* acc = p.acc_smem ? reinterpret_cast<A*>(smem + p.acc_off) + L.grp * slot_elems
                      : partials + (c.bid() * p.rows_per_block + L.grp) * slot_elems;
  T* cdy = p.cache ? reinterpret_cast<T*>(smem + p.cache_off) + L.grp * p.hpad : nullptr;
  TH* ch = p.cache ? reinterpret_cast<TH*>(smem + p.cache2_off) + L.grp * p.hpad : nullptr;
  const T* dy = static_cast<const T*>(a.grad_out);
  const TH* h = static_cast<const TH*>(a.h);
  const TH* gh = static_cast<const TH*>(a.grad_h);
  T* gx = static_cast<T*>(a.grad_input);
  TH* ght = static_cast<TH*>(a.grad_h_total);
  const A* mean_in = static_cast<const A*>(a.mean);
  const A* rstd_in = static_cast<const A*>(a.rstd);
  const int64_t nbits = a.rows * H;

  if (p.nsums > 0) {  // the thread's columns start at 0
    Unit<A> z;
DX_UNROLL
    for (int q = 0; q < kUnit; ++q) z.v[q] = A(0);
    for (int64_t k = 0; k < p.kmax; ++k) {
      const int64_t u = L.lane + k * p.group;
      if (u >= p.units) break;
      for (int s = 0; s < p.nsums; ++s) c.store_unit(acc + s * p.hpad + u * kUnit, z);
    }
  }

  for (int64_t r = L.first; r < a.rows; r += L.step) {
    const A mean = ln ? mean_in[r] : A(0);
    const A rstd = rstd_in[r];
    const int64_t b0 = r * H;
    const T* dyr = dy + r * a.dy_rs;
    const TH* hr = h + b0;

    // Pass 1: the row sums of g and g * xhat; the column sums of dy * xhat and dy.
    A sg = 0, sgx = 0;
    for (int64_t k0 = 0; k0 < p.kmax; k0 += KB) {
      A dv[KB][kUnit], hv[KB][kUnit];
DX_UNROLL
      for (int i = 0; i < KB; ++i) {
        const int64_t u = L.lane + (k0 + i) * p.group;
        if (k0 + i < p.kmax && u < p.units) {
          const int nv = static_cast<int>(H - u * kUnit < kUnit ? H - u * kUnit : kUnit);
          load8(c, dyr + u * kUnit, vec, nv, dv[i]);
          load8(c, hr + u * kUnit, vec, nv, hv[i]);
        }
      }
DX_UNROLL
      for (int i = 0; i < KB; ++i) {
        const int64_t u = L.lane + (k0 + i) * p.group;
        if (!(k0 + i < p.kmax && u < p.units)) continue;
        const int64_t c0 = u * kUnit;
        const int nv = static_cast<int>(H - c0 < kUnit ? H - c0 : kUnit);
        if (cdy) {  // the values as loaded (the tail's missing elements are 0)
          Unit<T> du;
          Unit<TH> hu;
DX_UNROLL
          for (int q = 0; q < kUnit; ++q) {
            du.v[q] = static_cast<T>(dv[i][q]);
            hu.v[q] = static_cast<TH>(hv[i][q]);
          }
          c.store_unit(cdy + c0, du);
          c.store_unit(ch + c0, hu);
        }
        A wv[kUnit];
        if (a.weight) load8_tf<T>(c, a.weight, a.param_f32, c0, vec, nv, wv);
        A dxh[kUnit];
DX_UNROLL
        for (int q = 0; q < kUnit; ++q) {
          const A xhat = ln ? (hv[i][q] - mean) * rstd : hv[i][q] * rstd;
          const A g = a.weight ? dv[i][q] * wv[q] : dv[i][q];
          if (q < nv) {
            sg = sg + g;
            sgx = sgx + g * xhat;
          }
          dxh[q] = dv[i][q] * xhat;
        }
        if (p.sum_w >= 0) acc_add(c, acc + p.sum_w * p.hpad, c0, dxh);
        if (p.sum_b >= 0) acc_add(c, acc + p.sum_b * p.hpad, c0, dv[i]);
      }
    }
    A t[2] = {sg, sgx};
    group_sum(c, p.group, t, red);
    const A mg = t[0] / n_div, mgx = t[1] / n_div;

    // Pass 2: dh, grad_h_total, grad_input, the column sum of dh * f.
    const TH* ghr = gh ? gh + r * a.dh_rs : nullptr;
    const uint64_t w0 = drawn ? static_cast<uint64_t>(a.rowmap.global_row(r)) * static_cast<uint64_t>(H) : 0;
    for (int64_t k = 0; k < p.kmax; ++k) {
      const int64_t u = L.lane + k * p.group;
      if (u >= p.units) break;
      const int64_t c0 = u * kUnit;
      const int nv = static_cast<int>(H - c0 < kUnit ? H - c0 : kUnit);
      const uint32_t keep = drawn ? keep8_lean(m, w0 + static_cast<uint64_t>(c0)) : read8(a.bits_in, nbits, b0 + c0);
      A dv[kUnit], hv[kUnit], wv[kUnit], gv[kUnit];
      if (cdy) {
        load8(c, cdy + c0, true, kUnit, dv);
        load8(c, ch + c0, true, kUnit, hv);
      } else {
        load8(c, dyr + c0, vec, nv, dv);
        load8(c, hr + c0, vec, nv, hv);
      }
      if (a.weight) load8_tf<T>(c, a.weight, a.param_f32, c0, vec, nv, wv);
      if (ghr) load8(c, ghr + c0, vec, nv, gv);
      A dh[kUnit], dx[kUnit];
DX_UNROLL
      for (int q = 0; q < kUnit; ++q) {
        const A xhat = ln ? (hv[q] - mean) * rstd : hv[q] * rstd;
        const A g = a.weight ? dv[q] * wv[q] : dv[q];
        A d = g - xhat * mgx;
        if (ln) d = d - mg;
        d = d * rstd;
        if (ghr) d = d + gv[q];
        dh[q] = d;
        dx[q] = d * (((keep >> q) & 1u) ? scale : A(0));
      }
      store8(c, ght + b0 + c0, vec, nv, dh);
      store8(c, gx + b0 + c0, vec, nv, dx);
      if (p.sum_ib >= 0) {
DX_UNROLL
        for (int q = 0; q < kUnit; ++q)
          if (q >= nv) dx[q] = A(0);
        acc_add(c, acc + p.sum_ib * p.hpad, c0, dx);
      }
    }
  }

  // The block's column sums to its slot: each group's own (global) already are; in shared
  // memory, the block's groups are added in group order.
  if (p.nsums > 0 && p.acc_smem) {
    A* slot = partials + c.bid() * slot_elems;
    if (p.rows_per_block == 1) {
      for (int64_t k = 0; k < p.kmax; ++k) {
        const int64_t u = L.lane + k * p.group;
        if (u >= p.units) break;
        for (int s = 0; s < p.nsums; ++s) {
          const int64_t e = s * p.hpad + u * kUnit;
          c.store_unit(slot + e, c.load_unit(acc + e));
        }
      }
    } else {
      c.sync();
      const A* all = reinterpret_cast<const A*>(smem + p.acc_off);
      for (int64_t e = c.tid(); e < slot_elems; e += p.threads) {
        A s = all[e];
        for (int g = 1; g < p.rows_per_block; ++g) s = s + all[g * slot_elems + e];
        slot[e] = s;
      }
    }
  }
}

// The column sums: slot by slot in order, kColsumLanes lanes per column (slots lane,
// lane + kColsumLanes, ...), their totals added in lane order. A block takes 32 columns of
// the nsums * hpad sums.
constexpr int kColsumLanes = 8;
constexpr int kColsumThreads = 32 * kColsumLanes;

template <typename A, class C>
DX_DEV void norm_colsum_body(const C& c, const NormArgs& a, const NormPlan& p, const A* partials, A* red) {
  const int col = c.tid() & 31, lane = c.tid() >> 5;
  const int64_t slot_elems = p.nsums * p.hpad;
  const int64_t e = c.bid() * 32 + col;
  const bool in = e < slot_elems;
  A s = 0;
  if (in)
    for (int64_t k = lane; k < p.slots; k += kColsumLanes) s = s + partials[k * slot_elems + e];
  red[lane * 32 + col] = s;
  c.sync();
  if (lane != 0 || !in) return;
  for (int l = 1; l < kColsumLanes; ++l) s = s + red[l * 32 + col];
  const int sum = static_cast<int>(e / p.hpad);
  const int64_t i = e - sum * p.hpad;
  if (i >= a.hidden) return;
  void* dst = sum == p.sum_w ? a.grad_weight : sum == p.sum_b ? a.grad_bias : a.grad_input_bias;
  static_cast<A*>(dst)[i] = s;
}

}  // namespace cuda
}  // namespace dropout_ext

// The flat kernel: every operand contiguous in the logical order (after index.h merged the
// dims), the common case. A thread takes UNROLL units of 8 consecutive elements (two
// Philox blocks, one byte of the bit mask, so no atomics) per iteration of a grid-stride
// loop, issues every load of its units before drawing, and uses 16-byte vector loads and
// stores. A bias of bias_dropout_add, and the mask bit of a channel-wise op read from bits
// (one bit per run of elements), are indexed incrementally (no division per element).
// 16-bit types, where the Philox rounds cost twice the time per byte, run a grid of only
// the resident blocks and load one iteration ahead (PIPE). The host's side: plan.h
// (flat_plan, FlatPlan) and dispatch.h (launch_flat).
#pragma once

#include "kernel_common.cuh"

namespace dropout_ext {
namespace cuda {

// Keep bits of the 8 elements from position e on, one mask bit per n elements; bits past
// the end of the mask (elements past numel in the last unit) read as 0.
DX_DEV uint32_t group_keep8(const uint8_t* bits, int64_t nbits, QR e, int64_t n) {
  if (e.r + kUnit <= n) return bit_at(bits, e.q) ? 0xFFu : 0u;  // one bit for the whole unit
  uint32_t k = 0;
  for (int q = 0; q < kUnit; ++q) {
    if (e.q < nbits && bit_at(bits, e.q)) k |= 1u << q;
    if (++e.r == n) {
      e.r = 0;
      ++e.q;
    }
  }
  return k;
}

// Channel-wise, drawn: keep bits of the 8 elements from position e on, word wbase + run
// index, runs of n >= 8 elements (so the unit spans at most two runs).
DX_DEV uint32_t group_draw8(const MaskParams& m, uint64_t wbase, QR e, int64_t n) {
  const uint32_t k0 = keep_element(m, wbase + static_cast<uint64_t>(e.q)) ? 0xFFu : 0u;
  if (e.r + kUnit <= n) return k0;
  const uint32_t first = (1u << (n - e.r)) - 1u;  // the elements left in run e.q
  const uint32_t k1 = keep_element(m, wbase + static_cast<uint64_t>(e.q) + 1) ? 0xFFu : 0u;
  return (k0 & first) | (k1 & ~first & 0xFFu);
}

// Channel-wise, drawn, bits saved: the thread whose unit holds the first element of run q,
// q a multiple of 8, writes the mask byte of runs q .. q+7 (one writer per byte: plain
// stores, no zeroing).
DX_DEV void group_bits_out(const MaskParams& m, uint64_t wbase, uint8_t* bits, int64_t nbits, QR e, int64_t n) {
  int64_t q;
  if (e.r == 0) q = e.q;
  else if (n - e.r < kUnit) q = e.q + 1;  // the next run starts inside this unit
  else return;
  if ((q & 7) != 0 || q >= nbits) return;
  uint32_t byte = keep8(m, wbase + static_cast<uint64_t>(q));
  if (nbits - q < 8) byte &= (1u << (nbits - q)) - 1u;
  bits[q >> 3] = static_cast<uint8_t>(byte);
}

template <typename T, bool RES, int UNROLL, class C>
DX_DEV void load_units(const C& c, const T* x, const T* res, int64_t u0, int64_t full, Held<T> (&xv)[UNROLL],
                       Held<T> (&rv)[UNROLL]) {
DX_UNROLL
  for (int i = 0; i < UNROLL; ++i) {
    const int64_t u = u0 + int64_t(i) * kThreads;
    if (u < full) {
      xv[i].load(c, x + u * kUnit);
      if (RES) rv[i].load(c, res + u * kUnit);
    }
  }
}

// A grid-stride loop over units of 8 elements: in each iteration a thread takes UNROLL
// units kThreads apart (coalesced). PIPE (the 16-bit types drawing Philox, where the rounds
// cost more time per byte): the loads of the thread's next iteration are issued before
// this one's Philox rounds, so that a grid of only the resident blocks keeps loads in
// flight while it computes (the host caps the grid then: FlatPlan, run_planned).
//
// MODE (drawing only; FlatMode): kFlatGroup draws the channel-wise mask here, one word per
// run, and kFlatRows the words of a column shard, row by row; each is a kernel of its own,
// so that the element-wise kernels keep their registers.
template <typename T, Op OP, bool FROM_BITS, int UNROLL, bool PIPE, int MODE, class C>
DX_DEV void flat_body(const C& c, const PassArgs& a, const FlatPlan& p) {
  constexpr bool kHasRes = OP == Op::DropoutAdd || OP == Op::BiasDropoutAdd;
  constexpr bool kHasBias = OP == Op::BiasDropoutAdd;
  constexpr bool kData = OP != Op::MaskOnly;
  const MaskParams m = resolve_mask(c, a);
  const Factors<T> f(m);
  const int64_t numel = a.g.numel;
  const int64_t units = (numel + kUnit - 1) / kUnit;
  const int64_t full = numel / kUnit;
  const T* x = static_cast<const T*>(a.x);
  const T* res = static_cast<const T*>(a.residual);
  const T* bias = static_cast<const T*>(a.bias);
  T* out = static_cast<T*>(a.out);
  constexpr bool kGroup = !FROM_BITS && MODE == kFlatGroup;
  constexpr bool kRows = !FROM_BITS && MODE == kFlatRows;
  const bool group = FROM_BITS ? p.group : kGroup;  // channel-wise (never with a bias)
  const bool track = kHasBias || group || kRows;  // the position against p.div is followed
  const int64_t step = c.nblocks() * kThreads * UNROLL;
  int64_t u0 = c.bid() * kThreads * UNROLL + c.tid();
  if (u0 >= units) return;
  Held<T> xv[UNROLL], rv[UNROLL];
  if (kData) load_units<T, kHasRes, UNROLL>(c, x, res, u0, full, xv, rv);
  QR pos;  // of the thread's first element in this iteration
  if (track) pos = split_qr(u0 * kUnit, p.div);
  for (;;) {
    const int64_t next = u0 + step;
    Held<T> xn[UNROLL], rn[UNROLL];
    if (PIPE && kData && next < units) load_units<T, kHasRes, UNROLL>(c, x, res, next, full, xn, rn);
    QR pu = pos;
DX_UNROLL
    for (int i = 0; i < UNROLL; ++i) {
      const int64_t u = u0 + int64_t(i) * kThreads;
      if (u >= units) break;
      const int valid = static_cast<int>(numel - u * kUnit < kUnit ? numel - u * kUnit : kUnit);
      uint32_t keep;
      if (FROM_BITS) {
        keep = group ? group_keep8(a.bits_in, a.nbits, pu, p.div) : a.bits_in[u];
      } else if (kGroup) {
        keep = group_draw8(m, a.g.wbase, pu, p.div);
        if (valid < kUnit) keep &= (1u << valid) - 1u;
        if (a.bits_out) group_bits_out(m, a.g.wbase, a.bits_out, a.nbits, pu, p.div);
      } else {
        // kRows: the unit lies in one row (div is a multiple of kUnit)
        const int64_t w = kRows ? pu.q * p.wrow + pu.r : u * kUnit;
        keep = keep8(m, a.g.wbase + static_cast<uint64_t>(w));
        if (valid < kUnit) keep &= (1u << valid) - 1u;
        if (a.bits_out) a.bits_out[u] = static_cast<uint8_t>(keep);
      }
      if (kData) {
        int64_t bq = pu.r;  // bias index of the unit's first element
        if (u < full) {
          Unit<T> ov;
DX_UNROLL
          for (int q = 0; q < kUnit; ++q) {
            T bv = T(0);
            if (kHasBias) {
              bv = bias[bq];
              if (++bq == p.div) bq = 0;
            }
            ov.v[q] = apply_one<T, OP>(f, (keep >> q) & 1u, xv[i][q], kHasRes ? rv[i][q] : T(0), bv);
          }
          c.store_unit(out + u * kUnit, ov);
        } else {
          for (int q = 0; q < valid; ++q) {
            T bv = T(0);
            if (kHasBias) {
              bv = bias[bq];
              if (++bq == p.div) bq = 0;
            }
            const int64_t e = u * kUnit + q;
            out[e] = apply_one<T, OP>(f, (keep >> q) & 1u, x[e], kHasRes ? res[e] : T(0), bv);
          }
        }
      }
      if (track) advance_qr(pu, p.d_unit, p.div);
    }
    if (next >= units) return;
    u0 = next;
    if (kData) {
      if (PIPE) {
DX_UNROLL
        for (int i = 0; i < UNROLL; ++i) {
          xv[i] = xn[i];
          if (kHasRes) rv[i] = rn[i];
        }
      } else {
        load_units<T, kHasRes, UNROLL>(c, x, res, u0, full, xv, rv);
      }
    }
    if (track) advance_qr(pos, p.d_step, p.div);
  }
}

}  // namespace cuda
}  // namespace dropout_ext

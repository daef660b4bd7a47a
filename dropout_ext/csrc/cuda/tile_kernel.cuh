// The tile kernel: any layout the flat kernel does not take. A block takes a tile of 2048
// elements of the plane of the last dim D (where words advance) and the dim M the output
// is contiguous along. It issues the loads of its elements first, then draws the tile's
// keep bits along D (one byte per thread), then applies them. Tile mode (lanes along M,
// coalesced for permuted layouts such as channels_last or a transpose) passes the bits
// through shared memory; row mode (lanes along D) keeps each thread on its own 8
// consecutive elements of a row. The host's side: plan.h (tile_plan, TilePlan) and
// dispatch.h (launch_tile).
#pragma once

#include "kernel_common.cuh"

namespace dropout_ext {
namespace cuda {

// Where a block's tile starts, decoded once per block by its first thread.
struct TileShared {
  uint8_t smask[kThreads];
  int64_t off[kOperands];
  int64_t bit, m0, d0;
  uint64_t word;
};

// i = v % n and v /= n for a block index (v < 2**31): 32-bit arithmetic.
DX_DEV int64_t split_index(uint32_t& v, int64_t n) {
  if (n > 0xFFFFFFFFll) {
    const int64_t i = v;
    v = 0;
    return i;
  }
  const uint32_t d = static_cast<uint32_t>(n);
  const uint32_t q = v / d;
  const int64_t i = v - q * d;
  v = q;
  return i;
}

template <typename T, Op OP, class C>
DX_DEV void tile_body(const C& c, const PassArgs& a, const TilePlan& t, TileShared& sh) {
  constexpr bool kHasRes = OP == Op::DropoutAdd || OP == Op::BiasDropoutAdd;
  constexpr bool kHasBias = OP == Op::BiasDropoutAdd;
  const MaskParams m = resolve_mask(c, a);
  const int tid = c.tid();
  if (tid == 0) {
    uint32_t b = static_cast<uint32_t>(c.bid());
    const int64_t dt = split_index(b, t.dtiles);
    const int64_t mt = split_index(b, t.mtiles);
    const int64_t m0 = mt << t.log_tm, d0 = dt << t.log_td;
    int64_t off[kOperands];
    for (int k = 0; k < kOperands; ++k) off[k] = m0 * t.st_m[k] + d0 * t.st_d[k];
    uint64_t word = a.g.wbase + static_cast<uint64_t>(m0 * t.ws_m + d0 * t.ws_d);
    int64_t bit = m0 * t.bs_m + d0 * t.bs_d;
    for (int d = t.nouter - 1; d >= 0; --d) {
      const int64_t i = split_index(b, t.outer_size[d]);
      for (int k = 0; k < kOperands; ++k) off[k] += i * t.outer_st[k][d];
      word += static_cast<uint64_t>(i * t.outer_ws[d]);
      bit += i * t.outer_bs[d];
    }
    for (int k = 0; k < kOperands; ++k) sh.off[k] = off[k];
    sh.word = word;
    sh.bit = bit;
    sh.m0 = m0;
    sh.d0 = d0;
  }
  c.sync();
  const T* x = static_cast<const T*>(a.x);
  const T* res = static_cast<const T*>(a.residual);
  const T* bias = static_cast<const T*>(a.bias);
  T* out = static_cast<T*>(a.out);
  const int64_t m0 = sh.m0, d0 = sh.d0;
  // The thread's mask byte: row r of M, byte kk of D (d = d0 + 8kk .. +7).
  const int bytes_per_row = 1 << (t.log_td - 3);
  const int r = tid >> (t.log_td - 3);
  const int kk = tid & (bytes_per_row - 1);
  const int64_t mm = m0 + r, dd = d0 + 8 * kk;
  const bool in_range = mm < t.size_m && dd < t.size_d;
  const int valid = in_range ? static_cast<int>(t.size_d - dd < 8 ? t.size_d - dd : 8) : 0;

  // Loads first, so that their latency overlaps the Philox rounds below.
  // Row mode: the thread's own byte, 8 elements along D. Tile mode: 8 elements of the
  // tile at (ml, dl0 + i * dstep), lanes along M.
  T xs[kTilePerThread] = {}, rs[kTilePerThread] = {}, bs[kTilePerThread] = {};
  Held<T> xh, rh, bh;  // row mode, vector accesses
  bool vec = false;
  int64_t roff[kOperands] = {};
  const int tm_mask = (1 << t.log_tm) - 1;
  const int ml = tid & tm_mask, dl0 = tid >> t.log_tm;
  const int dstep = kThreads >> t.log_tm;
  const bool m_in = m0 + ml < t.size_m;
  if (OP != Op::MaskOnly) {
    if (!t.lanes_on_m) {
      if (valid > 0) {
DX_UNROLL
        for (int k = 0; k < kOperands; ++k) roff[k] = sh.off[k] + r * t.st_m[k] + 8 * kk * t.st_d[k];
        const bool contiguous = t.st_d[kX] == 1 && t.st_d[kOut] == 1 && (!kHasRes || t.st_d[kRes] == 1) &&
                                (!kHasBias || t.st_d[kBias] == 1);
        constexpr int64_t kUnitBytes = sizeof(Unit<T>);
        vec = contiguous && valid == 8 && aligned(x + roff[kX], kUnitBytes) && aligned(out + roff[kOut], kUnitBytes) &&
              (!kHasRes || aligned(res + roff[kRes], kUnitBytes)) && (!kHasBias || aligned(bias + roff[kBias], kUnitBytes));
        if (vec) {  // 16-bit types: held packed until the apply below
          xh.load(c, x + roff[kX]);
          if (kHasRes) rh.load(c, res + roff[kRes]);
          if (kHasBias) bh.load(c, bias + roff[kBias]);
          if constexpr (sizeof(T) != 2) {
DX_UNROLL
            for (int q = 0; q < 8; ++q) {
              xs[q] = xh[q];
              rs[q] = kHasRes ? rh[q] : T(0);
              bs[q] = kHasBias ? bh[q] : T(0);
            }
          }
        } else {
DX_UNROLL
          for (int q = 0; q < 8; ++q) {
            if (q < valid) {
              xs[q] = x[roff[kX] + q * t.st_d[kX]];
              rs[q] = kHasRes ? res[roff[kRes] + q * t.st_d[kRes]] : T(0);
              bs[q] = kHasBias ? bias[roff[kBias] + q * t.st_d[kBias]] : T(0);
            }
          }
        }
      }
    } else if (m_in) {
DX_UNROLL
      for (int k = 0; k < kOperands; ++k) roff[k] = sh.off[k] + ml * t.st_m[k] + dl0 * t.st_d[k];
DX_UNROLL
      for (int i = 0; i < kTilePerThread; ++i) {
        const int dl = dl0 + i * dstep;
        if (d0 + dl < t.size_d) {
          const int64_t di = int64_t(i) * dstep;
          xs[i] = x[roff[kX] + di * t.st_d[kX]];
          rs[i] = kHasRes ? res[roff[kRes] + di * t.st_d[kRes]] : T(0);
          bs[i] = kHasBias ? bias[roff[kBias] + di * t.st_d[kBias]] : T(0);
        }
      }
    }
  }

  // Keep bits of the thread's byte.
  uint32_t keep = 0;
  if (in_range) {
    const int64_t bit = sh.bit + r * t.bs_m + 8 * kk * t.bs_d;
    if (a.bits_in) {
      if (t.bs_d == 1) keep = read8(a.bits_in, a.nbits, bit);
      else if (t.bs_d == 0) keep = bit_at(a.bits_in, bit) ? 0xFFu : 0u;
      else
        for (int q = 0; q < valid; ++q) keep |= static_cast<uint32_t>(bit_at(a.bits_in, bit + q * t.bs_d)) << q;
    } else {
      const uint64_t w = sh.word + static_cast<uint64_t>(r * t.ws_m + 8 * kk * t.ws_d);
      if (t.ws_d == 1) keep = keep8(m, w);
      else if (t.ws_d == 0) keep = keep_element(m, w) ? 0xFFu : 0u;
      else
        for (int q = 0; q < valid; ++q) keep |= static_cast<uint32_t>(keep_element(m, w + q * t.ws_d)) << q;
    }
    keep &= (1u << valid) - 1u;
    if (a.bits_out) {  // element-wise masks only: bits advance by 1 along D
      if (t.bits_plain) a.bits_out[bit >> 3] = static_cast<uint8_t>(keep);
      else or_bits(c, a.bits_out, bit, keep);
    }
  }
  if (OP == Op::MaskOnly) return;
  const Factors<T> f(m);
  if (!t.lanes_on_m) {
    if (valid == 0) return;
    if (vec) {
      Unit<T> ov;
DX_UNROLL
      for (int q = 0; q < 8; ++q) {
        if constexpr (sizeof(T) == 2)
          ov.v[q] = apply_one<T, OP>(f, (keep >> q) & 1u, xh[q], kHasRes ? rh[q] : T(0), kHasBias ? bh[q] : T(0));
        else
          ov.v[q] = apply_one<T, OP>(f, (keep >> q) & 1u, xs[q], rs[q], bs[q]);
      }
      c.store_unit(out + roff[kOut], ov);
      return;
    }
DX_UNROLL
    for (int q = 0; q < 8; ++q)
      if (q < valid) out[roff[kOut] + q * t.st_d[kOut]] = apply_one<T, OP>(f, (keep >> q) & 1u, xs[q], rs[q], bs[q]);
    return;
  }
  // Tile mode: the keep bits come from the shared tile.
  sh.smask[tid] = static_cast<uint8_t>(keep);
  c.sync();
  if (!m_in) return;
DX_UNROLL
  for (int i = 0; i < kTilePerThread; ++i) {
    const int dl = dl0 + i * dstep;
    if (d0 + dl < t.size_d) {
      const bool k = (sh.smask[ml * bytes_per_row + (dl >> 3)] >> (dl & 7)) & 1;
      out[roff[kOut] + int64_t(i) * dstep * t.st_d[kOut]] = apply_one<T, OP>(f, k, xs[i], rs[i], bs[i]);
    }
  }
}

}  // namespace cuda
}  // namespace dropout_ext

// Host planning of a pass on the CUDA kernels: the launch constants, the plans the kernels
// receive (FlatPlan, TilePlan) and which kernel takes a pass (flat_plan, tile_plan). Plain
// C++ with a few host-device helpers, compiled by nvcc for the GPU launcher (launch.cu)
// and by g++ for the emulator (../testing/cuda_emulation.cpp). The kernels themselves are
// in flat_kernel.cuh and tile_kernel.cuh, the choice of template arguments per pass in
// dispatch.h.
#pragma once

#include <algorithm>
#include <cstdint>

#include "../pass_args.h"

namespace dropout_ext {
namespace cuda {

constexpr int kThreads = 256;
constexpr int kUnit = 8;          // elements per thread step: two Philox blocks, one mask byte
constexpr int kTileElems = 2048;  // tile kernel: elements per block (kThreads units)
constexpr int kTilePerThread = kTileElems / kThreads;

// True when p (or nullptr: an absent operand) is a multiple of `bytes`: where a Unit may be
// loaded (bytes = sizeof(Unit<T>)), on the host planner and in the kernels alike.
DX_HOST_DEVICE bool aligned(const void* p, int64_t bytes) {
  return p == nullptr || reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

// An element index against a divisor n (a bias row's length, or a channel-wise mask's
// elements per bit): e = q * n + r. The kernel advances it by fixed steps that the host
// split once (FlatPlan), so no thread divides per element.
struct QR {
  int64_t q = 0, r = 0;
};

DX_HOST_DEVICE QR split_qr(int64_t e, int64_t n) { return QR{e / n, e % n}; }

DX_HOST_DEVICE void advance_qr(QR& p, const QR& d, int64_t n) {
  p.q += d.q;
  p.r += d.r;
  if (p.r >= n) {
    p.r -= n;
    ++p.q;
  }
}

// What the host tells the flat kernel beyond PassArgs.
struct FlatPlan {
  int64_t div = 1;     // bias_dropout_add: the bias row's length; group: elements per mask bit;
                       // rows: the row's length
  bool group = false;  // channel-wise: one mask word (drawn) or bit (bits_in) per `div` consecutive
                       // elements; drawn only when div >= kUnit (a unit spans at most two runs)
  bool rows = false;   // rows of `div` elements (a multiple of kUnit) contiguous in memory whose
                       // mask words are not: element (q, r) draws word wbase + q * wrow + r
                       // (a column shard's slice of the full tensor's mask)
  int64_t wrow = 0;
  QR d_unit;           // kThreads * kUnit elements (a thread's next unit) split by div
  QR d_step;           // the grid stride in elements split by div
};

// What a flat kernel draws its mask words from (its MODE template argument).
enum FlatMode : int {
  kFlatElementwise = 0,  // word wbase + element index
  kFlatGroup = 1,        // one word per run of FlatPlan::div elements (channel-wise)
  kFlatRows = 2,         // word wbase + q * wrow + r for element (q, r) of rows of div elements
};

// The tile plane (M, D) and the other ("outer") dims, computed on the host.
struct TilePlan {
  int log_tm = 0, log_td = 11;  // tile extents along M and D, tm * td == kTileElems
  bool lanes_on_m = false;      // lanes along M (tile mode) or D (row mode)
  bool bits_plain = false;      // every written mask byte is whole and byte-aligned: plain stores
  int64_t size_m = 1, size_d = 1;
  int64_t st_m[kOperands] = {}, st_d[kOperands] = {};
  int64_t ws_m = 0, ws_d = 0, bs_m = 0, bs_d = 0;
  int64_t mtiles = 1, dtiles = 1;
  int nouter = 0;  // outer dims, outermost first
  int64_t outer_size[kMaxDims] = {};
  int64_t outer_st[kOperands][kMaxDims] = {};
  int64_t outer_ws[kMaxDims] = {}, outer_bs[kMaxDims] = {};
};

inline int log2_ceil(int64_t v) {
  int l = 0;
  while ((int64_t(1) << l) < v) ++l;
  return l;
}

inline int64_t blocks_for(int64_t work, int64_t per_block) {
  const int64_t blocks = (work + per_block - 1) / per_block;
  return std::max<int64_t>(1, std::min<int64_t>(blocks, int64_t(1) << 30));
}

// Flat when every present operand is contiguous in the logical order (bias: one row
// repeated, contiguous), the pointers allow Unit loads, and either words and bits advance
// by one per element, or (reading bits) the mask is channel-wise: one bit per run of
// consecutive elements, or rows of whole units draw words at a row stride of their own.
// Fills the plan's divisor (bias row, run or row length).
inline bool flat_plan(const PassArgs& a, int64_t elem, FlatPlan* p) {
  const Geometry& g = a.g;
  const bool res = a.op == Op::DropoutAdd || a.op == Op::BiasDropoutAdd;
  const bool bias = a.op == Op::BiasDropoutAdd;
  const bool data = a.op != Op::MaskOnly;
  const int64_t unit_bytes = elem * kUnit;
  if (!aligned(a.x, unit_bytes) || !aligned(a.out, unit_bytes) || (res && !aligned(a.residual, unit_bytes)))
    return false;
  auto data_strides = [&](int d, int64_t s) {
    if (data && (g.stride[kOut][d] != s || g.stride[kX][d] != s)) return false;
    return !res || g.stride[kRes][d] == s;
  };
  auto unit_strides = [&](int d, int64_t s) {
    return data_strides(d, s) && g.bstride[d] == s && (a.bits_in || g.wstride[d] == s);
  };
  // Rows of c contiguous elements (and bits) whose words advance by one along the row but
  // by wstride[0] from row to row (a column shard); units stay in one row.
  auto rows = [&](int64_t c) {
    if (a.bits_in || !data || c % kUnit != 0 || !data_strides(1, 1) || !data_strides(0, c)) return false;
    if (g.bstride[1] != 1 || g.bstride[0] != c || g.wstride[1] != 1) return false;
    p->rows = true;
    p->div = c;
    p->wrow = g.wstride[0];
    return true;
  };
  p->div = 1;
  p->group = false;
  p->rows = false;
  if (g.ndim == 1 && !bias && unit_strides(0, 1)) return true;
  if (g.ndim == 2 && bias && g.stride[kBias][1] == 1 && g.stride[kBias][0] == 0) {
    p->div = g.size[1];
    return (unit_strides(1, 1) && unit_strides(0, g.size[1])) || rows(g.size[1]);
  }
  if (g.ndim == 2 && !bias && rows(g.size[1])) return true;
  // Channel-wise: one bit (read) or word (drawn) per run of p->div elements.
  if (!bias && data) {
    p->group = true;
    if (g.ndim == 1 && g.bstride[0] == 0 && (a.bits_in || g.wstride[0] == 0) && data_strides(0, 1)) {
      p->div = g.size[0];
      return a.bits_in || p->div >= kUnit;
    }
    if (g.ndim == 2 && g.bstride[0] == 1 && g.bstride[1] == 0 && (a.bits_in || (g.wstride[0] == 1 && g.wstride[1] == 0)) &&
        data_strides(1, 1) && data_strides(0, g.size[1])) {
      p->div = g.size[1];
      return a.bits_in || p->div >= kUnit;
    }
  }
  return false;
}

inline TilePlan tile_plan(const Geometry& g) {
  TilePlan t;
  const int D = g.ndim - 1;
  int M;
  if (g.tile) {
    M = g.mem;
    t.lanes_on_m = true;
    // D as short as the rows allow (>= 8, one mask byte), M as long as the tile then holds
    t.log_td = std::max(3, std::min(6, log2_ceil(g.size[D])));
    t.log_tm = 11 - t.log_td;
  } else {
    M = D - 1;  // -1: no M dim (a single row)
    t.lanes_on_m = false;
    t.log_td = std::max(3, std::min(11, log2_ceil(g.size[D])));
    t.log_tm = 11 - t.log_td;
  }
  t.size_d = g.size[D];
  for (int k = 0; k < kOperands; ++k) t.st_d[k] = g.stride[k][D];
  t.ws_d = g.wstride[D];
  t.bs_d = g.bstride[D];
  if (M >= 0) {
    t.size_m = g.size[M];
    for (int k = 0; k < kOperands; ++k) t.st_m[k] = g.stride[k][M];
    t.ws_m = g.wstride[M];
    t.bs_m = g.bstride[M];
  }
  t.mtiles = (t.size_m + (int64_t(1) << t.log_tm) - 1) >> t.log_tm;
  t.dtiles = (t.size_d + (int64_t(1) << t.log_td) - 1) >> t.log_td;
  t.bits_plain = t.size_d % 8 == 0 && t.bs_m % 8 == 0;
  for (int d = 0; d < g.ndim; ++d) {
    if (d == D || d == M) continue;
    const int o = t.nouter++;
    t.outer_size[o] = g.size[d];
    for (int k = 0; k < kOperands; ++k) t.outer_st[k][o] = g.stride[k][d];
    t.outer_ws[o] = g.wstride[d];
    t.outer_bs[o] = g.bstride[d];
    t.bits_plain = t.bits_plain && t.outer_bs[o] % 8 == 0;
  }
  return t;
}

}  // namespace cuda
}  // namespace dropout_ext

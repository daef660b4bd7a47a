// Where each element of a pass lives: its memory offset in every operand, its mask word
// (its Philox index, docs/design.md "The mask") and its bit in the packed keep mask.
// Shared by the CPU and CUDA kernels (host + device), torch-free like philox.h.
//
// Every index is an affine function of the element's multi-index (i_0 .. i_{d-1}) in the
// tensor's (local) shape:
//   memory offset of operand k   sum_d i_d * stride[k][d]      (elements; any layout)
//   mask word                    wbase + sum_d i_d * wstride[d]
//   bit of the packed mask       sum_d i_d * bstride[d]
// For element-wise dropout `wstride` are the row-major strides of the shape (of the full
// tensor's shape for a shard, with `wbase` the shard's first word), so a word follows the
// logical index whatever the memory layout. Channel-wise dropout and drop_path keep only
// the leading `lead` dims in the mask: the other dims have word and bit stride 0.
// `bstride` are the row-major strides of the local mask shape, so backward reads the bits
// of an element whatever the layout of the gradient.
//
// make_geometry drops dims of size 1 and merges neighbours that are contiguous in every
// index at once, so a contiguous tensor becomes one dim and a channels_last one (N, C, HW).
#pragma once

#include <cstdint>

#include "philox.h"

namespace dropout_ext {

constexpr int kMaxDims = 8;  // after dropping size-1 dims and merging

// Operands of a pass, in the order of Geometry::stride.
enum Operand : int { kOut = 0, kX = 1, kRes = 2, kBias = 3, kOperands = 4 };

struct Geometry {
  int ndim = 0;
  int64_t numel = 0;
  int64_t size[kMaxDims] = {};
  int64_t stride[kOperands][kMaxDims] = {};
  int64_t wstride[kMaxDims] = {};
  int64_t bstride[kMaxDims] = {};
  uint64_t wbase = 0;
  // Loop plan (chosen by plan_loops): `inner` is the last dim, along which words and
  // bits advance; `mem` the dim along which the output is contiguous. Row mode runs
  // along `inner`; tile mode (mem != inner) takes tiles of the (mem, inner) plane, so
  // that memory is touched along `mem` while words are drawn along `inner`.
  bool tile = false;
  int mem = 0;
};

// Row-major strides of `shape[0 .. n)` into `out`.
inline void rowmajor_strides(const int64_t* shape, int n, int64_t* out) {
  int64_t s = 1;
  for (int d = n - 1; d >= 0; --d) {
    out[d] = s;
    s *= shape[d];
  }
}

// What a caller describes; make_geometry turns it into a Geometry.
struct GeometryRequest {
  int ndim = 0;                  // the tensor's dims (any number)
  const int64_t* size = nullptr;
  const int64_t* stride[kOperands] = {};  // null: operand absent (treated as stride 0)
  int lead = 0;                  // dims [0, lead) index the mask
  const int64_t* global_size = nullptr;    // null: the tensor is not a shard
  const int64_t* global_offset = nullptr;
};

// Fills `g`; false when more than kMaxDims dims remain after merging (the caller then
// uses row-major staging copies). Every operand's strides are in elements.
inline bool make_geometry(const GeometryRequest& r, Geometry& g) {
  g = Geometry();
  g.numel = 1;
  for (int d = 0; d < r.ndim; ++d) g.numel *= r.size[d];
  // Word strides: row-major strides of the global mask shape; bit strides: of the local.
  // Computed over all dims (size-1 dims still carry the shard's offset into wbase).
  int64_t wst[64], bst[64];
  int64_t wsize[64], bsize[64];
  const int nd = r.ndim < 64 ? r.ndim : 64;
  for (int d = 0; d < nd; ++d) {
    wsize[d] = d < r.lead ? (r.global_size ? r.global_size[d] : r.size[d]) : 1;
    bsize[d] = d < r.lead ? r.size[d] : 1;
  }
  rowmajor_strides(wsize, nd, wst);
  rowmajor_strides(bsize, nd, bst);
  uint64_t wbase = 0;
  for (int d = 0; d < r.lead && d < nd; ++d) {
    if (r.global_offset) wbase += static_cast<uint64_t>(r.global_offset[d]) * static_cast<uint64_t>(wst[d]);
  }
  g.wbase = wbase;
  // Drop size-1 dims, merge neighbours contiguous in every index.
  int n = 0;
  for (int d = 0; d < nd; ++d) {
    if (r.size[d] == 1) continue;
    const int64_t ws = d < r.lead ? wst[d] : 0;
    const int64_t bs = d < r.lead ? bst[d] : 0;
    int64_t st[kOperands];
    for (int k = 0; k < kOperands; ++k) st[k] = r.stride[k] ? r.stride[k][d] : 0;
    if (n > 0) {
      const int64_t sz = r.size[d];
      bool merge = g.wstride[n - 1] == ws * sz && g.bstride[n - 1] == bs * sz;
      for (int k = 0; k < kOperands && merge; ++k) merge = g.stride[k][n - 1] == st[k] * sz;
      if (merge) {
        g.size[n - 1] *= sz;
        g.wstride[n - 1] = ws;
        g.bstride[n - 1] = bs;
        for (int k = 0; k < kOperands; ++k) g.stride[k][n - 1] = st[k];
        continue;
      }
    }
    if (n == kMaxDims) return false;
    g.size[n] = r.size[d];
    g.wstride[n] = ws;
    g.bstride[n] = bs;
    for (int k = 0; k < kOperands; ++k) g.stride[k][n] = st[k];
    ++n;
  }
  if (n == 0) {  // one element (or none)
    g.size[0] = g.numel;
    n = 1;
  }
  g.ndim = n;
  return true;
}

// Row or tile mode. Tiles pay off when the output is contiguous along another dim than
// the last and that dim is long enough to fill the vector lanes (min_tile_rows).
inline void plan_loops(Geometry& g, int64_t min_tile_rows) {
  const int inner = g.ndim - 1;
  int mem = inner;
  int64_t best = -1;
  for (int d = 0; d < g.ndim; ++d) {
    const int64_t s = g.stride[kOut][d] < 0 ? -g.stride[kOut][d] : g.stride[kOut][d];
    if (s != 0 && (best < 0 || s < best)) {
      best = s;
      mem = d;
    }
  }
  const int64_t inner_stride = g.stride[kOut][inner] < 0 ? -g.stride[kOut][inner] : g.stride[kOut][inner];
  g.mem = mem;
  g.tile = mem != inner && inner_stride != 1 && g.size[mem] >= min_tile_rows;
  if (!g.tile) g.mem = inner;
}

}  // namespace dropout_ext

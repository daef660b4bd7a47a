// The CUDA kernels of a pass (../pass_args.h), written once for two compilers.
//
// nvcc compiles them for the GPU (launch.cu). g++ compiles the same text for the host
// (../cpu/cuda_emulation.cpp), where a small emulator runs a launch's blocks and threads
// with the same block size, shared memory and barriers, so that the CPU test suite checks
// the kernels' index arithmetic, bit packing and alignment on every machine, bit for bit
// against the CPU engine and the oracle, GPU or not.
//
// Everything a kernel takes from the hardware goes through a context `c`: c.tid(),
// c.bid(), c.nblocks(), c.sync() (__syncthreads), c.atomic_or(), and c.load_unit() /
// c.load_words() / c.store_unit() for the 16-byte vector accesses (the emulator checks
// their alignment).
// Shared memory is a struct the __global__ wrapper declares __shared__ and the emulator
// allocates per block.
//
// The Philox and threshold arithmetic come from ../philox.h and the element indices from
// ../index.h, the headers the CPU kernels use, so for a given (key, base) every backend
// draws the same mask whatever the grid or the layout.
//
// Two kernels:
//  - flat: every operand contiguous in the logical order (after index.h merged the dims),
//    the common case. A thread takes UNROLL units of 8 consecutive elements (two Philox
//    blocks, one byte of the bit mask, so no atomics) per iteration of a grid-stride loop,
//    issues every load of its units before drawing, and uses 16-byte vector loads and
//    stores. A bias of bias_dropout_add, and the mask bit of a channel-wise op read from
//    bits (one bit per run of elements), are indexed incrementally (no division per
//    element). 16-bit types, where the Philox rounds cost twice the time per byte, run a
//    grid of only the resident blocks and load one iteration ahead (PIPE).
//  - tile: any other layout. A block takes a tile of 2048 elements of the plane of the
//    last dim D (where words advance) and the dim M the output is contiguous along. It
//    issues the loads of its elements first, then draws the tile's keep bits along D (one
//    byte per thread), then applies them. Tile mode (lanes along M, coalesced for permuted
//    layouts such as channels_last or a transpose) passes the bits through shared memory;
//    row mode (lanes along D) keeps each thread on its own 8 consecutive elements of a row.
// (key, base) come by value, or are read by the kernel from device memory (an rng tensor
// on the GPU, or the generator's Philox state under graph capture), so each replay of a
// captured CUDA graph draws a fresh mask.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>

#include "../pass_args.h"

#if defined(__CUDACC__)
#define DX_DEV __device__ __forceinline__
#define DX_UNROLL _Pragma("unroll")
#else
#define DX_DEV inline
#define DX_UNROLL
#endif

namespace dropout_ext {
namespace cuda {

constexpr int kThreads = 256;
constexpr int kUnit = 8;          // elements per thread step: two Philox blocks, one mask byte
constexpr int kTileElems = 2048;  // tile kernel: elements per block (kThreads units)
constexpr int kTilePerThread = kTileElems / kThreads;

template <typename T>
struct alignas(sizeof(T) * kUnit) Unit {
  T v[kUnit];
};

struct alignas(16) Words {
  uint32_t v[4];
};

// A unit as a thread holds it from its load to its use. 16-bit elements stay packed in
// 32-bit words until they are read: loaded as a Unit, they would be split into eight
// registers right at the load (nvcc does), so the thread would wait there for its data,
// before its Philox rounds, instead of at the first use after them (SASS: the PRMTs that
// followed each 128-bit load).
template <typename T, bool PACKED = sizeof(T) == 2>
struct Held {
  Unit<T> u;
  template <class C>
  DX_DEV void load(const C& c, const T* p) {
    u = c.load_unit(p);
  }
  DX_DEV T operator[](int q) const { return u.v[q]; }
};

template <typename T>
struct Held<T, true> {
  Words w;
  template <class C>
  DX_DEV void load(const C& c, const T* p) {
    w = c.load_words(p);
  }
  DX_DEV T operator[](int q) const {
    return T(static_cast<uint16_t>(w.v[q >> 1] >> (16 * (q & 1))), T::from_bits());
  }
};

template <class C>
DX_DEV MaskParams resolve_mask(const C& c, const PassArgs& a) {
  MaskParams m = a.mask;
  if (a.rng.key_ptr) {
    m.key = static_cast<uint64_t>(*a.rng.key_ptr);
    m.base = (static_cast<uint64_t>(*a.rng.base_ptr) + a.rng.base_add) ^ a.rng.base_xor;
  }
  if (a.rng_out && c.bid() == 0 && c.tid() == 0) {
    a.rng_out[0] = static_cast<int64_t>(m.key);
    a.rng_out[1] = static_cast<int64_t>(m.base);
  }
  return m;
}

// Keep bits of the 8 consecutive words w .. w+7 (bit q = word w + q): two Philox blocks
// when w starts a block, else the three that cover them.
template <int S>
DX_DEV uint32_t keep8_from(const uint32_t (&u)[12], uint32_t threshold) {
  uint32_t r = 0;
DX_UNROLL
  for (int q = 0; q < 8; ++q) r |= static_cast<uint32_t>(u[S + q] >= threshold) << q;
  return r;
}

DX_DEV uint32_t keep8(const MaskParams& m, uint64_t w) {
  if (m.drop_all) return 0u;
  if (m.keep_all) return 0xFFu;
  const uint64_t j = w >> 2;
  const Philox4 b0 = philox_block(m, j);
  const Philox4 b1 = philox_block(m, j + 1);
  const int s = static_cast<int>(w & 3);
  if (s == 0) {
    uint32_t r = 0;
DX_UNROLL
    for (int q = 0; q < 4; ++q) {
      r |= static_cast<uint32_t>(b0.v[q] >= m.threshold) << q;
      r |= static_cast<uint32_t>(b1.v[q] >= m.threshold) << (q + 4);
    }
    return r;
  }
  const Philox4 b2 = philox_block(m, j + 2);
  const uint32_t u[12] = {b0.v[0], b0.v[1], b0.v[2], b0.v[3], b1.v[0], b1.v[1],
                          b1.v[2], b1.v[3], b2.v[0], b2.v[1], b2.v[2], b2.v[3]};
  switch (s) {  // constant indices: the words stay in registers
    case 1: return keep8_from<1>(u, m.threshold);
    case 2: return keep8_from<2>(u, m.threshold);
    default: return keep8_from<3>(u, m.threshold);
  }
}

// 8 bits from bit index b of `bits` (nbits long); bits past the end read as 0.
DX_DEV uint32_t read8(const uint8_t* bits, int64_t nbits, int64_t b) {
  const int64_t byte = b >> 3;
  const int s = static_cast<int>(b & 7);
  uint32_t v = bits[byte];
  if (s != 0 && byte + 1 < ((nbits + 7) >> 3)) v |= static_cast<uint32_t>(bits[byte + 1]) << 8;
  return (v >> s) & 0xFFu;
}

DX_DEV bool bit_at(const uint8_t* bits, int64_t b) { return (bits[b >> 3] >> (b & 7)) & 1; }

// ORs `v` (n <= 8 bits) into bit index b of a zeroed bit array other threads write too.
// 32-bit atomics: ops.cpp (bit_buffer) allocates bit arrays in whole 32-bit words, so the
// aligned word holding the array's last byte lies inside its allocation (its bytes past
// the end only get zeros ORed); the next word is touched only when it receives set bits.
template <class C>
DX_DEV void or_bits(const C& c, uint8_t* bits, int64_t b, uint32_t v) {
  if (v == 0) return;
  const uintptr_t addr = reinterpret_cast<uintptr_t>(bits + (b >> 3));
  unsigned int* word = reinterpret_cast<unsigned int*>(addr & ~uintptr_t(3));
  const int shift = static_cast<int>((addr & 3) * 8 + (b & 7));
  c.atomic_or(word, v << shift);
  if (shift > 24) {  // bits past this word; none when v's high bits are 0 (the array may end here)
    const uint32_t hi = v >> (32 - shift);
    if (hi) c.atomic_or(word + 1, hi);
  }
}

template <typename T>
struct Factors {
  using acc_t = at::opmath_type<T>;
  acc_t scale, keep_shift, drop_shift;
  DX_DEV explicit Factors(const MaskParams& m) {
    if (sizeof(acc_t) == 8) {
      scale = m.scale_d, keep_shift = m.keep_shift_d, drop_shift = m.drop_shift_d;
    } else {
      scale = m.scale_f, keep_shift = m.keep_shift_f, drop_shift = m.drop_shift_f;
    }
  }
};

template <typename T, Op OP>
DX_DEV T apply_one(const Factors<T>& f, bool keep, T x, T r, T b) {
  using acc_t = at::opmath_type<T>;
  acc_t v = static_cast<acc_t>(x);
  if (OP == Op::BiasDropoutAdd) v = v + static_cast<acc_t>(b);
  v = v * (keep ? f.scale : acc_t(0));
  if (OP == Op::DropoutAdd || OP == Op::BiasDropoutAdd) v = static_cast<acc_t>(r) + v;
  if (OP == Op::Alpha) v = v + (keep ? f.keep_shift : f.drop_shift);
  return static_cast<T>(v);
}

// ------------------------------------------------------------------------ flat kernel

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

// ------------------------------------------------------------------------ tile kernel

// True when p (or nullptr: an absent operand) is a multiple of `bytes`: where a Unit may be
// loaded (bytes = sizeof(Unit<T>)), on the host planner and in the kernels alike.
DX_HOST_DEVICE bool aligned(const void* p, int64_t bytes) {
  return p == nullptr || reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

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

// ------------------------------------------------------------------------ planning

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

// Knobs of the flat kernel, for the bench's sweep (bench_gpu.py) and the tests.
struct FlatTuning {
  int unroll = 2;         // units per thread per iteration of the forward dropout (1, 2 or 4)
  bool persistent = true; // PIPE kernels: a grid of only the resident blocks
};

// The process's knobs, shared by the GPU launcher and the emulator (cuda_emulation.cpp,
// which registers the ops that set them: _cuda_unroll, _cuda_persistent).
FlatTuning& flat_tuning();

// Launches the flat kernel with UNROLL units per thread. The grid covers the tensor
// (one iteration per thread), except for PIPE kernels when tuning.persistent is set, and
// wherever the launcher caps it (L::max_blocks: the resident blocks on the GPU; a few
// blocks in the emulator, so that the tests run the grid-stride loop).
template <class L, typename T, Op OP, bool FROM_BITS, int UNROLL, int MODE = kFlatElementwise>
void launch_flat(L& l, const PassArgs& a, FlatPlan p, const FlatTuning& tune) {
  constexpr bool kPipe = sizeof(T) == 2 && !FROM_BITS && OP != Op::MaskOnly;
  const int64_t units = (a.g.numel + kUnit - 1) / kUnit;
  const int64_t blocks = std::min(
      blocks_for(units, kThreads * UNROLL),
      l.template max_blocks<T, OP, FROM_BITS, UNROLL, kPipe, MODE>(kPipe && tune.persistent));
  p.d_unit = split_qr(int64_t(kThreads) * kUnit, p.div);
  p.d_step = split_qr(blocks * kThreads * UNROLL * kUnit, p.div);
  l.template flat<T, OP, FROM_BITS, UNROLL, kPipe, MODE>(blocks, a, p);
}

// Plans and launches a pass (numel > 0) through a launcher L, which provides
//   L::flat<T, OP, FROM_BITS, UNROLL, PIPE, MODE>(blocks, a, plan)
//   L::max_blocks<T, OP, FROM_BITS, UNROLL, PIPE, MODE>(persistent): a cap on the flat grid
//   L::tile<T, OP>(blocks, a, plan)
//   L::zero(bits, bytes)
// tuning.unroll (1, 2 or 4) is the flat forward dropout's units per thread; every other op
// uses 2.
template <class L, typename T, Op OP>
void launch_planned(L& l, const PassArgs& a, const FlatPlan& p, const FlatTuning& tune) {
  if (a.bits_in) return launch_flat<L, T, OP, true, 2>(l, a, p, tune);
  if (p.group) {  // drawn channel-wise: only from try_channel_pass, for the ops that have it
    if constexpr (OP == Op::Dropout || OP == Op::Alpha) {
      return launch_flat<L, T, OP, false, 2, kFlatGroup>(l, a, p, tune);
    }
    TORCH_CHECK(false, "dropout_ext: no channel-wise kernel for this op");
  }
  if (p.rows) {  // flat_plan sets it only for the data ops
    if constexpr (OP != Op::MaskOnly) return launch_flat<L, T, OP, false, 2, kFlatRows>(l, a, p, tune);
    TORCH_CHECK(false, "dropout_ext: no row kernel for the mask pass");
  }
  if constexpr (OP == Op::Dropout) {
    if (tune.unroll == 1) return launch_flat<L, T, OP, false, 1>(l, a, p, tune);
    if (tune.unroll == 4) return launch_flat<L, T, OP, false, 4>(l, a, p, tune);
  }
  launch_flat<L, T, OP, false, 2>(l, a, p, tune);
}

template <class L, typename T, Op OP>
void launch_tile(L& l, const PassArgs& a) {
  const TilePlan t = tile_plan(a.g);
  // Rows that do not start on a byte share bytes: their bits are ORed into zeroed memory.
  if (a.bits_out && !t.bits_plain) l.zero(a.bits_out, (a.nbits + 7) / 8);
  const int64_t blocks = a.g.numel / (t.size_m * t.size_d) * t.mtiles * t.dtiles;
  TORCH_CHECK(blocks <= 0x7FFFFFFF, "dropout_ext: tensor too large for one launch");
  l.template tile<T, OP>(blocks, a, t);
}

// The flat kernel where flat_plan takes the pass, else the tile kernel. group_only (from
// try_channel_pass): launch only a channel-wise pass that draws its own words, and say
// whether it ran.
template <class L, typename T, Op OP>
bool run_planned(L& l, const PassArgs& a, const FlatTuning& tune, bool group_only) {
  FlatPlan p;
  const bool flat = flat_plan(a, sizeof(T), &p);
  if (group_only && !(flat && p.group && !a.bits_in)) return false;
  if (flat) {
    launch_planned<L, T, OP>(l, a, p, tune);
  } else {
    launch_tile<L, T, OP>(l, a);
  }
  return true;
}

template <class L, typename T>
bool run_op(L& l, const PassArgs& a, const FlatTuning& tune, bool group_only) {
  switch (a.op) {
    case Op::Dropout: return run_planned<L, T, Op::Dropout>(l, a, tune, group_only);
    case Op::DropoutAdd: return run_planned<L, T, Op::DropoutAdd>(l, a, tune, group_only);
    case Op::BiasDropoutAdd: return run_planned<L, T, Op::BiasDropoutAdd>(l, a, tune, group_only);
    case Op::Alpha: return run_planned<L, T, Op::Alpha>(l, a, tune, group_only);
    case Op::MaskOnly: return run_planned<L, T, Op::MaskOnly>(l, a, tune, group_only);
  }
  return false;
}

// The kernel for the dtype, on a geometry whose loops are planned (plan_loops); false only
// when group_only and the pass is not a drawn channel-wise flat one (run_planned).
template <class L>
bool run_planned_pass(L& l, const PassArgs& a, const FlatTuning& tune, bool group_only) {
  switch (a.dtype) {
    case DType::Float16: return run_op<L, at::Half>(l, a, tune, group_only);
    case DType::BFloat16: return run_op<L, at::BFloat16>(l, a, tune, group_only);
    case DType::Float32: return run_op<L, float>(l, a, tune, group_only);
    case DType::Float64: return run_op<L, double>(l, a, tune, group_only);
  }
  return false;
}

// The whole pass for numel > 0: loop plan (index.h), then the kernel for the dtype.
template <class L>
void run_pass(L& l, PassArgs& a, const FlatTuning& tune) {
  plan_loops(a.g, 8);
  run_planned_pass(l, a, tune, false);
}

// A channel-wise pass that draws its own mask words (launch.h): run when the flat kernel
// takes it, else false (the caller then draws the reduced mask in a pass of its own).
template <class L>
bool try_channel_pass(L& l, PassArgs& a, const FlatTuning& tune) {
  if (a.g.numel == 0 || a.bits_in || (a.op != Op::Dropout && a.op != Op::Alpha)) return false;
  plan_loops(a.g, 8);
  return run_planned_pass(l, a, tune, true);
}

}  // namespace cuda
}  // namespace dropout_ext

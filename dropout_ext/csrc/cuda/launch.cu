// CUDA kernels of a pass (../pass_args.h) and (key, base) from the CUDA generator.
//
// The Philox and threshold arithmetic come from ../philox.h and the element indices from
// ../index.h, the same headers the CPU kernels use, so for a given (key, base) every
// backend draws the same mask whatever the grid or the layout.
//
// Two kernels:
//  - flat_kernel: every operand contiguous in the logical order (after index.h merged
//    the dims), the common case. A thread takes UNROLL units of 8 consecutive elements
//    (two Philox blocks, one byte of the bit mask, so no atomics), issues every load of
//    its units before drawing, and uses 16-byte vector loads and stores. A bias of
//    bias_dropout_add is indexed incrementally (no division per element).
//  - tile_kernel: any other layout. A block takes a tile of 2048 elements of the plane of
//    the last dim D (where words advance) and the dim M the output is contiguous along:
//    phase 1 draws the tile's keep bits along D, one byte per thread, into shared memory;
//    phase 2 touches memory with the warp's lanes along M (tile mode, coalesced for
//    permuted layouts such as channels_last or a transpose) or along D (row mode, where
//    each thread takes its own 8 consecutive elements of a row).
// (key, base) come by value, or are read by the kernel from device memory (an rng tensor
// on the GPU, or the generator's Philox state under graph capture), so each replay of a
// captured CUDA graph draws a fresh mask.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <limits>
#include <mutex>

#include "../launch.h"

namespace dropout_ext {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kUnit = 8;         // elements per thread step: two Philox blocks, one mask byte
constexpr int kTileElems = 2048;  // tile_kernel: elements per block (kThreads units)

int g_unroll = 2;  // flat_kernel units per thread (tunable for the bench: _cuda_unroll)

template <typename T>
struct alignas(sizeof(T) * kUnit) Unit {
  T v[kUnit];
};

__device__ __forceinline__ MaskParams resolve_mask(const PassArgs& a) {
  MaskParams m = a.mask;
  if (a.rng.key_ptr) {
    m.key = static_cast<uint64_t>(*a.rng.key_ptr);
    m.base = (static_cast<uint64_t>(*a.rng.base_ptr) + a.rng.base_add) ^ a.rng.base_xor;
  }
  if (a.rng_out && blockIdx.x == 0 && threadIdx.x == 0) {
    a.rng_out[0] = static_cast<int64_t>(m.key);
    a.rng_out[1] = static_cast<int64_t>(m.base);
  }
  return m;
}

__global__ void rng_kernel(const PassArgs a) { resolve_mask(a); }

// Keep bits of the 8 consecutive words w .. w+7 (bit q = word w + q): two Philox blocks
// when w starts a block, else the three that cover them.
template <int S>
__device__ __forceinline__ uint32_t keep8_from(const uint32_t (&u)[12], uint32_t threshold) {
  uint32_t r = 0;
#pragma unroll
  for (int q = 0; q < 8; ++q) r |= static_cast<uint32_t>(u[S + q] >= threshold) << q;
  return r;
}

__device__ __forceinline__ uint32_t keep8(const MaskParams& m, uint64_t w) {
  if (m.drop_all) return 0u;
  if (m.keep_all) return 0xFFu;
  const uint64_t j = w >> 2;
  const Philox4 b0 = philox_block(m, j);
  const Philox4 b1 = philox_block(m, j + 1);
  const int s = static_cast<int>(w & 3);
  if (s == 0) {
    uint32_t r = 0;
#pragma unroll
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
__device__ __forceinline__ uint32_t read8(const uint8_t* bits, int64_t nbits, int64_t b) {
  const int64_t byte = b >> 3;
  const int s = static_cast<int>(b & 7);
  uint32_t v = bits[byte];
  if (s != 0 && byte + 1 < ((nbits + 7) >> 3)) v |= static_cast<uint32_t>(bits[byte + 1]) << 8;
  return (v >> s) & 0xFFu;
}

__device__ __forceinline__ bool bit_at(const uint8_t* bits, int64_t b) { return (bits[b >> 3] >> (b & 7)) & 1; }

// ORs `v` (n <= 8 bits) into bit index b of a zeroed bit array other threads write too.
// 32-bit atomics: the CUDA caching allocator rounds blocks to 512 bytes, so the aligned
// word holding the array's last byte lies inside its allocation (its bytes past the end
// only get zeros ORed); the next word is touched only when it receives set bits.
__device__ __forceinline__ void or_bits(uint8_t* bits, int64_t b, uint32_t v) {
  if (v == 0) return;
  const uintptr_t addr = reinterpret_cast<uintptr_t>(bits + (b >> 3));
  unsigned int* word = reinterpret_cast<unsigned int*>(addr & ~uintptr_t(3));
  const int shift = static_cast<int>((addr & 3) * 8 + (b & 7));
  atomicOr(word, v << shift);
  if (shift > 24) {  // bits past this word; none when v's high bits are 0 (the array may end here)
    const uint32_t hi = v >> (32 - shift);
    if (hi) atomicOr(word + 1, hi);
  }
}

template <typename T>
struct Factors {
  using acc_t = at::opmath_type<T>;
  acc_t scale, keep_shift, drop_shift;
  __device__ __forceinline__ explicit Factors(const MaskParams& m) {
    if (sizeof(acc_t) == 8) {
      scale = m.scale_d, keep_shift = m.keep_shift_d, drop_shift = m.drop_shift_d;
    } else {
      scale = m.scale_f, keep_shift = m.keep_shift_f, drop_shift = m.drop_shift_f;
    }
  }
};

template <typename T, Op OP>
__device__ __forceinline__ T apply_one(const Factors<T>& f, bool keep, T x, T r, T b) {
  using acc_t = at::opmath_type<T>;
  acc_t v = static_cast<acc_t>(x);
  if (OP == Op::BiasDropoutAdd) v = v + static_cast<acc_t>(b);
  v = v * (keep ? f.scale : acc_t(0));
  if (OP == Op::DropoutAdd || OP == Op::BiasDropoutAdd) v = static_cast<acc_t>(r) + v;
  if (OP == Op::Alpha) v = v + (keep ? f.keep_shift : f.drop_shift);
  return static_cast<T>(v);
}

// ------------------------------------------------------------------------ flat_kernel

template <typename T, Op OP, bool FROM_BITS, int UNROLL>
__global__ void __launch_bounds__(kThreads) flat_kernel(const PassArgs a, int64_t bias_len) {
  constexpr bool kHasRes = OP == Op::DropoutAdd || OP == Op::BiasDropoutAdd;
  constexpr bool kHasBias = OP == Op::BiasDropoutAdd;
  constexpr bool kData = OP != Op::MaskOnly;
  const MaskParams m = resolve_mask(a);
  const Factors<T> f(m);
  const int64_t numel = a.g.numel;
  const int64_t units = (numel + kUnit - 1) / kUnit;
  const int64_t full = numel / kUnit;
  const T* x = static_cast<const T*>(a.x);
  const T* res = static_cast<const T*>(a.residual);
  const T* bias = static_cast<const T*>(a.bias);
  T* out = static_cast<T*>(a.out);
  const int64_t step = static_cast<int64_t>(gridDim.x) * kThreads * UNROLL;
  for (int64_t u0 = static_cast<int64_t>(blockIdx.x) * kThreads * UNROLL + threadIdx.x; u0 < units; u0 += step) {
    Unit<T> xv[UNROLL], rv[UNROLL];
    if (kData) {
#pragma unroll
      for (int i = 0; i < UNROLL; ++i) {
        const int64_t u = u0 + int64_t(i) * kThreads;
        if (u < full) {
          xv[i] = reinterpret_cast<const Unit<T>*>(x)[u];
          if (kHasRes) rv[i] = reinterpret_cast<const Unit<T>*>(res)[u];
        }
      }
    }
    int64_t b0 = 0;  // bias index of the thread's first element; advanced, not divided
    if (kHasBias) b0 = (u0 * kUnit) % bias_len;
#pragma unroll
    for (int i = 0; i < UNROLL; ++i) {
      const int64_t u = u0 + int64_t(i) * kThreads;
      if (u >= units) break;
      const int valid = static_cast<int>(numel - u * kUnit < kUnit ? numel - u * kUnit : kUnit);
      uint32_t keep;
      if (FROM_BITS) {
        keep = a.bits_in[u];
      } else {
        keep = keep8(m, a.g.wbase + static_cast<uint64_t>(u * kUnit));
        if (valid < kUnit) keep &= (1u << valid) - 1u;
        if (a.bits_out) a.bits_out[u] = static_cast<uint8_t>(keep);
      }
      if (kData) {
        int64_t bq = b0;
        if (u < full) {
          Unit<T> ov;
#pragma unroll
          for (int q = 0; q < kUnit; ++q) {
            T bv = T(0);
            if (kHasBias) {
              bv = bias[bq];
              if (++bq == bias_len) bq = 0;
            }
            ov.v[q] = apply_one<T, OP>(f, (keep >> q) & 1u, xv[i].v[q], kHasRes ? rv[i].v[q] : T(0), bv);
          }
          reinterpret_cast<Unit<T>*>(out)[u] = ov;
        } else {
          for (int q = 0; q < valid; ++q) {
            T bv = T(0);
            if (kHasBias) {
              bv = bias[bq];
              if (++bq == bias_len) bq = 0;
            }
            const int64_t e = u * kUnit + q;
            out[e] = apply_one<T, OP>(f, (keep >> q) & 1u, x[e], kHasRes ? res[e] : T(0), bv);
          }
        }
      }
      if (kHasBias) {
        // next unit of this thread: kThreads * kUnit elements on (bias_len >= kUnit)
        b0 += (int64_t(kThreads) * kUnit) % bias_len;
        if (b0 >= bias_len) b0 -= bias_len;
      }
    }
  }
}

// ------------------------------------------------------------------------ tile_kernel

template <typename T>
__device__ __forceinline__ bool aligned_unit(const T* p) {
  return reinterpret_cast<uintptr_t>(p) % (sizeof(T) * kUnit) == 0;
}

// The tile plane (M, D) and the other ("outer") dims, computed on the host.
struct TilePlan {
  int log_tm = 0, log_td = 11;  // tile extents along M and D, tm * td == kTileElems
  bool lanes_on_m = false;      // phase 2: warp lanes along M (tile mode) or D (row mode)
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

template <typename T, Op OP>
__global__ void __launch_bounds__(kThreads) tile_kernel(const PassArgs a, const TilePlan t) {
  constexpr bool kHasRes = OP == Op::DropoutAdd || OP == Op::BiasDropoutAdd;
  constexpr bool kHasBias = OP == Op::BiasDropoutAdd;
  __shared__ uint8_t smask[kThreads];
  __shared__ int64_t s_off[kOperands];
  __shared__ int64_t s_bit, s_m0, s_d0;
  __shared__ uint64_t s_word;
  const MaskParams m = resolve_mask(a);
  if (threadIdx.x == 0) {
    int64_t b = blockIdx.x;
    const int64_t dt = b % t.dtiles;
    b /= t.dtiles;
    const int64_t mt = b % t.mtiles;
    int64_t outer = b / t.mtiles;
    const int64_t m0 = mt << t.log_tm, d0 = dt << t.log_td;
    int64_t off[kOperands];
    for (int k = 0; k < kOperands; ++k) off[k] = m0 * t.st_m[k] + d0 * t.st_d[k];
    uint64_t word = a.g.wbase + static_cast<uint64_t>(m0 * t.ws_m + d0 * t.ws_d);
    int64_t bit = m0 * t.bs_m + d0 * t.bs_d;
    for (int d = t.nouter - 1; d >= 0; --d) {
      const int64_t i = outer % t.outer_size[d];
      outer /= t.outer_size[d];
      for (int k = 0; k < kOperands; ++k) off[k] += i * t.outer_st[k][d];
      word += static_cast<uint64_t>(i * t.outer_ws[d]);
      bit += i * t.outer_bs[d];
    }
    for (int k = 0; k < kOperands; ++k) s_off[k] = off[k];
    s_word = word;
    s_bit = bit;
    s_m0 = m0;
    s_d0 = d0;
  }
  __syncthreads();
  // Phase 1: thread -> (row r of M, byte kk of D): keep bits of d = d0 + 8kk .. +7.
  const int bytes_per_row = 1 << (t.log_td - 3);
  const int r = threadIdx.x >> (t.log_td - 3);
  const int kk = threadIdx.x & (bytes_per_row - 1);
  const int64_t mm = s_m0 + r, dd = s_d0 + 8 * kk;
  uint32_t keep = 0;
  int valid = 0;
  if (mm < t.size_m && dd < t.size_d) {
    valid = static_cast<int>(t.size_d - dd < 8 ? t.size_d - dd : 8);
    const int64_t bit = s_bit + r * t.bs_m + 8 * kk * t.bs_d;
    if (a.bits_in) {
      if (t.bs_d == 1) keep = read8(a.bits_in, a.nbits, bit);
      else if (t.bs_d == 0) keep = bit_at(a.bits_in, bit) ? 0xFFu : 0u;
      else
        for (int q = 0; q < valid; ++q) keep |= static_cast<uint32_t>(bit_at(a.bits_in, bit + q * t.bs_d)) << q;
    } else {
      const uint64_t w = s_word + static_cast<uint64_t>(r * t.ws_m + 8 * kk * t.ws_d);
      if (t.ws_d == 1) keep = keep8(m, w);
      else if (t.ws_d == 0) keep = keep_element(m, w) ? 0xFFu : 0u;
      else
        for (int q = 0; q < valid; ++q) keep |= static_cast<uint32_t>(keep_element(m, w + q * t.ws_d)) << q;
    }
    keep &= (1u << valid) - 1u;
    if (a.bits_out) {  // element-wise masks only: bits advance by 1 along D
      if (t.bits_plain) a.bits_out[bit >> 3] = static_cast<uint8_t>(keep);
      else or_bits(a.bits_out, bit, keep);
    }
  }
  if (OP == Op::MaskOnly) return;
  const Factors<T> f(m);
  const T* x = static_cast<const T*>(a.x);
  const T* res = static_cast<const T*>(a.residual);
  const T* bias = static_cast<const T*>(a.bias);
  T* out = static_cast<T*>(a.out);
  if (!t.lanes_on_m) {
    // Row mode: the thread's own 8 consecutive elements of row r.
    if (valid == 0) return;
    int64_t off[kOperands];
#pragma unroll
    for (int k = 0; k < kOperands; ++k) off[k] = s_off[k] + r * t.st_m[k] + 8 * kk * t.st_d[k];
    const bool contiguous = t.st_d[kX] == 1 && t.st_d[kOut] == 1 && (!kHasRes || t.st_d[kRes] == 1) &&
                            (!kHasBias || t.st_d[kBias] == 1);
    if (contiguous && valid == 8 && aligned_unit<T>(x + off[kX]) && aligned_unit<T>(out + off[kOut]) &&
        (!kHasRes || aligned_unit<T>(res + off[kRes])) && (!kHasBias || aligned_unit<T>(bias + off[kBias]))) {
      const Unit<T> xv = *reinterpret_cast<const Unit<T>*>(x + off[kX]);
      Unit<T> rv, bv, ov;
      if (kHasRes) rv = *reinterpret_cast<const Unit<T>*>(res + off[kRes]);
      if (kHasBias) bv = *reinterpret_cast<const Unit<T>*>(bias + off[kBias]);
#pragma unroll
      for (int q = 0; q < 8; ++q)
        ov.v[q] = apply_one<T, OP>(f, (keep >> q) & 1u, xv.v[q], kHasRes ? rv.v[q] : T(0), kHasBias ? bv.v[q] : T(0));
      *reinterpret_cast<Unit<T>*>(out + off[kOut]) = ov;
      return;
    }
    T xs[8], rs[8], bs[8];
#pragma unroll
    for (int q = 0; q < 8; ++q) {
      if (q < valid) {
        xs[q] = x[off[kX] + q * t.st_d[kX]];
        rs[q] = kHasRes ? res[off[kRes] + q * t.st_d[kRes]] : T(0);
        bs[q] = kHasBias ? bias[off[kBias] + q * t.st_d[kBias]] : T(0);
      }
    }
#pragma unroll
    for (int q = 0; q < 8; ++q)
      if (q < valid) out[off[kOut] + q * t.st_d[kOut]] = apply_one<T, OP>(f, (keep >> q) & 1u, xs[q], rs[q], bs[q]);
    return;
  }
  // Tile mode: lanes along M; the keep bits come from the shared tile.
  smask[threadIdx.x] = static_cast<uint8_t>(keep);
  __syncthreads();
  const int tm_mask = (1 << t.log_tm) - 1;
#pragma unroll
  for (int i = 0; i < kTileElems / kThreads; ++i) {
    const int e = threadIdx.x + kThreads * i;
    const int ml = e & tm_mask, dl = e >> t.log_tm;
    if (s_m0 + ml < t.size_m && s_d0 + dl < t.size_d) {
      const bool k = (smask[ml * bytes_per_row + (dl >> 3)] >> (dl & 7)) & 1;
      int64_t off[kOperands];
#pragma unroll
      for (int q = 0; q < kOperands; ++q) off[q] = s_off[q] + ml * t.st_m[q] + dl * t.st_d[q];
      out[off[kOut]] = apply_one<T, OP>(f, k, x[off[kX]], kHasRes ? res[off[kRes]] : T(0), kHasBias ? bias[off[kBias]] : T(0));
    }
  }
}

// ------------------------------------------------------------------------ host side

int log2_ceil(int64_t v) {
  int l = 0;
  while ((int64_t(1) << l) < v) ++l;
  return l;
}

int64_t blocks_for(int64_t work, int64_t per_block) {
  const int64_t blocks = (work + per_block - 1) / per_block;
  return std::max<int64_t>(1, std::min<int64_t>(blocks, int64_t(1) << 30));
}

bool aligned(const void* p, int64_t bytes) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// Flat when every present operand is contiguous in the logical order (bias: one row
// repeated, contiguous), words and bits advance by one per element and the pointers allow
// Unit loads.
bool flat_plan(const PassArgs& a, int64_t elem, int64_t* bias_len) {
  const Geometry& g = a.g;
  const bool res = a.op == Op::DropoutAdd || a.op == Op::BiasDropoutAdd;
  const bool bias = a.op == Op::BiasDropoutAdd;
  const bool data = a.op != Op::MaskOnly;
  const int64_t unit_bytes = elem * kUnit;
  if (!aligned(a.x, unit_bytes) || !aligned(a.out, unit_bytes) || (res && !aligned(a.residual, unit_bytes)))
    return false;
  auto unit_strides = [&](int d, int64_t s) {
    if (data && (g.stride[kOut][d] != s || g.stride[kX][d] != s)) return false;
    if (res && g.stride[kRes][d] != s) return false;
    return g.bstride[d] == s && (a.bits_in || g.wstride[d] == s);
  };
  *bias_len = 1;
  if (g.ndim == 1) return !bias && unit_strides(0, 1);
  if (g.ndim == 2 && bias && g.stride[kBias][1] == 1 && g.stride[kBias][0] == 0) {
    *bias_len = g.size[1];
    return unit_strides(1, 1) && unit_strides(0, g.size[1]);
  }
  return false;
}

TilePlan tile_plan(const Geometry& g) {
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

template <typename T, Op OP, bool FROM_BITS>
void launch_flat(const PassArgs& a, int64_t bias_len) {
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t units = (a.g.numel + kUnit - 1) / kUnit;
  // The unroll sweep (bench) only varies the forward dropout; every other op uses 2.
  if constexpr (OP == Op::Dropout && !FROM_BITS) {
    if (g_unroll == 1) {
      flat_kernel<T, OP, FROM_BITS, 1><<<blocks_for(units, kThreads), kThreads, 0, stream>>>(a, bias_len);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    if (g_unroll == 4) {
      flat_kernel<T, OP, FROM_BITS, 4><<<blocks_for(units, kThreads * 4), kThreads, 0, stream>>>(a, bias_len);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
  }
  flat_kernel<T, OP, FROM_BITS, 2><<<blocks_for(units, kThreads * 2), kThreads, 0, stream>>>(a, bias_len);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, Op OP>
void launch(const PassArgs& a) {
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  int64_t bias_len = 1;
  if (flat_plan(a, sizeof(T), &bias_len)) {
    if (a.bits_in) launch_flat<T, OP, true>(a, bias_len);
    else launch_flat<T, OP, false>(a, bias_len);
    return;
  }
  const TilePlan t = tile_plan(a.g);
  // Rows that do not start on a byte share bytes: their bits are ORed into zeroed memory.
  if (a.bits_out && !t.bits_plain) C10_CUDA_CHECK(cudaMemsetAsync(a.bits_out, 0, (a.nbits + 7) / 8, stream));
  const int64_t blocks = a.g.numel / (t.size_m * t.size_d) * t.mtiles * t.dtiles;
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "dropout_ext: tensor too large for one launch");
  tile_kernel<T, OP><<<blocks, kThreads, 0, stream>>>(a, t);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_op(const PassArgs& a) {
  switch (a.op) {
    case Op::Dropout: return launch<T, Op::Dropout>(a);
    case Op::DropoutAdd: return launch<T, Op::DropoutAdd>(a);
    case Op::BiasDropoutAdd: return launch<T, Op::BiasDropoutAdd>(a);
    case Op::Alpha: return launch<T, Op::Alpha>(a);
    case Op::MaskOnly: return launch<T, Op::MaskOnly>(a);
  }
}

int64_t cuda_unroll(int64_t request) {
  TORCH_CHECK(request == 0 || request == 1 || request == 2 || request == 4,
              "dropout_ext: unroll must be 1, 2 or 4 (0 to query)");
  if (request) g_unroll = static_cast<int>(request);
  return g_unroll;
}

}  // namespace
}  // namespace cuda

void cuda_run_pass(PassArgs& a) {
  if (a.g.numel == 0) {
    // nothing to compute, but the (key, base) this call drew is still owed to rng_out
    if (a.rng_out) {
      cuda::rng_kernel<<<1, 1, 0, at::cuda::getCurrentCUDAStream()>>>(a);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    return;
  }
  plan_loops(a.g, 8);
  switch (a.dtype) {
    case DType::Float16: return cuda::launch_op<at::Half>(a);
    case DType::BFloat16: return cuda::launch_op<at::BFloat16>(a);
    case DType::Float32: return cuda::launch_op<float>(a);
    case DType::Float64: return cuda::launch_op<double>(a);
  }
}

void cuda_draw_rng(const std::optional<at::Generator>& gen, const at::Device& device, PassArgs& a) {
  auto* g = at::get_generator_or_default<at::CUDAGeneratorImpl>(
      gen, at::cuda::detail::getDefaultCUDAGenerator(device.has_index() ? device.index() : c10::cuda::current_device()));
  at::PhiloxCudaState st;
  {
    std::lock_guard<std::mutex> lock(g->mutex_);
    st = g->philox_cuda_state(4);
  }
  if (st.captured_) {
    a.rng.key_ptr = st.seed_.ptr;
    a.rng.base_ptr = st.offset_.ptr;
    a.rng.base_add = static_cast<uint64_t>(st.offset_intragraph_);
    a.rng.base_xor = kCudaBaseTag;
  } else {
    a.mask.key = st.seed_.val;
    a.mask.base = st.offset_.val ^ kCudaBaseTag;
  }
}

}  // namespace dropout_ext

TORCH_LIBRARY_FRAGMENT(dropout_ext, m) {
  // The flat kernel's units per thread for the forward dropout (bench sweep); 0 queries.
  m.def("_cuda_unroll(int request) -> int", &dropout_ext::cuda::cuda_unroll);
}

// The device code both CUDA kernels share (flat_kernel.cuh, tile_kernel.cuh), written once
// for two compilers.
//
// nvcc compiles the kernels for the GPU (launch.cu). g++ compiles the same text for the
// host (../testing/cuda_emulation.cpp, in the testing module), where a small emulator runs
// a launch's blocks and threads with the same block size, shared memory and barriers, so
// that the CPU test suite checks the kernels' index arithmetic, bit packing and alignment
// on every machine, bit for bit against the CPU engine and the oracle, GPU or not.
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
// (key, base) come by value, or are read by the kernel from device memory (an rng tensor
// on the GPU, or the generator's Philox state under graph capture), so each replay of a
// captured CUDA graph draws a fresh mask.
#pragma once

#include <ATen/OpMathType.h>

#include <cstdint>

#include "plan.h"

#if defined(__CUDACC__)
#define DX_DEV __device__ __forceinline__
#define DX_UNROLL _Pragma("unroll")
#else
#define DX_DEV inline
#define DX_UNROLL
#endif

namespace dropout_ext {
namespace cuda {

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

// (key, base) of a launch (PassArgs, NormArgs: mask, rng, rng_out), written to rng_out by
// the grid's first thread.
template <class C, class Args>
DX_DEV MaskParams resolve_mask(const C& c, const Args& a) {
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

}  // namespace cuda
}  // namespace dropout_ext

// CPU launchers of the fused dropout + add + norm ops (../launch.h, ../norm_args.h): the
// parameters in the accumulation type, the rows in chunks over at::parallel_for, the ISA's
// row kernels (norm_kernels.h), and the column sums of backward reduced across chunks.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../launch.h"
#include "norm_kernels.h"

namespace dropout_ext {
namespace cpu {
namespace {

// Elements per chunk at least: below this a call runs on one thread.
constexpr int64_t kGrainElements = 1 << 15;

// Rows per chunk: one chunk per thread, at least kGrainElements elements, and a multiple
// of 8 rows, so that a chunk's first bit of the packed mask starts a byte. The split
// depends only on the shape and the thread count: so does the order of backward's sums.
int64_t chunk_rows(int64_t rows, int64_t hidden) {
  auto up8 = [](int64_t n) { return (n + 7) / 8 * 8; };
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t least = up8((kGrainElements + hidden - 1) / hidden);
  return std::max(least, up8((rows + threads - 1) / threads));
}

// A (hidden,) parameter of storage `dtype` in the accumulation type A, zero-padded by
// kNormPad elements (the kernels load whole vectors at a row's tail).
template <typename A>
std::vector<A> widen(const void* p, DType dtype, int64_t hidden) {
  std::vector<A> v(static_cast<size_t>(hidden + kNormPad), A(0));
  for (int64_t c = 0; c < hidden; ++c) {
    switch (dtype) {
      case DType::Float16: v[c] = static_cast<A>(static_cast<float>(static_cast<const c10::Half*>(p)[c])); break;
      case DType::BFloat16: v[c] = static_cast<A>(static_cast<float>(static_cast<const c10::BFloat16*>(p)[c])); break;
      case DType::Float32: v[c] = static_cast<A>(static_cast<const float*>(p)[c]); break;
      case DType::Float64: v[c] = static_cast<A>(static_cast<const double*>(p)[c]); break;
    }
  }
  return v;
}

template <typename A>
struct Params {
  explicit Params(const NormArgs& a) {
    const DType pd = a.param_f32 ? DType::Float32 : a.dtype;
    if (a.weight) w = widen<A>(a.weight, pd, a.hidden);
    if (a.bias) b = widen<A>(a.bias, pd, a.hidden);
    if (a.input_bias) ib = widen<A>(a.input_bias, a.dtype, a.hidden);
    p.weight = w.empty() ? nullptr : w.data();
    p.bias = b.empty() ? nullptr : b.data();
    p.input_bias = ib.empty() ? nullptr : ib.data();
  }
  std::vector<A> w, b, ib;
  NormParams p;
};

// A chunk's scratch, 64-byte aligned (whole vectors and cache lines).
class Scratch {
 public:
  explicit Scratch(int64_t bytes) : buf_(static_cast<size_t>(bytes + 64)) {}
  void* get() {
    const uintptr_t p = reinterpret_cast<uintptr_t>(buf_.data());
    return reinterpret_cast<void*>((p + 63) / 64 * 64);
  }

 private:
  std::vector<char> buf_;
};

using ForwardFn = void (*)(const NormArgs&, const NormParams&, int64_t, int64_t, void*);
using BackwardFn = void (*)(const NormArgs&, const NormParams&, int64_t, int64_t, void*, void*, void*, void*);

// Runs fn(chunk) for every chunk, on threads when there are several.
template <typename F>
void for_chunks(int64_t chunks, const F& fn) {
  if (chunks == 1) return fn(0);
  at::parallel_for(0, chunks, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) fn(i);
  });
}

template <typename A>
void forward(const NormArgs& a) {
  ForwardFn fn = norm_forward_scalar;
  switch (current_isa()) {
    case Isa::Avx512: fn = norm_forward_avx512; break;
    case Isa::Avx2: fn = norm_forward_avx2; break;
    case Isa::Scalar: break;
  }
  const Params<A> prm(a);
  const int64_t per = chunk_rows(a.rows, a.hidden), chunks = (a.rows + per - 1) / per;
  const int64_t scratch = norm_fwd_scratch(a.hidden, sizeof(A));
  for_chunks(chunks, [&](int64_t i) {
    Scratch row(scratch);
    fn(a, prm.p, i * per, std::min(a.rows, (i + 1) * per), row.get());
  });
}

template <typename A>
void backward(const NormArgs& a) {
  BackwardFn fn = norm_backward_scalar;
  switch (current_isa()) {
    case Isa::Avx512: fn = norm_backward_avx512; break;
    case Isa::Avx2: fn = norm_backward_avx2; break;
    case Isa::Scalar: break;
  }
  const Params<A> prm(a);
  const int64_t H = a.hidden, stride = H + kNormPad;
  const int64_t per = chunk_rows(a.rows, H), chunks = (a.rows + per - 1) / per;
  void* outs[3] = {a.grad_weight, a.grad_bias, a.grad_input_bias};
  // each chunk's column sums, then their sum in chunk order
  std::vector<A> sums[3];
  for (int k = 0; k < 3; ++k)
    if (outs[k]) sums[k].assign(static_cast<size_t>(chunks * stride), A(0));
  auto at = [&](int k, int64_t i) { return outs[k] ? static_cast<void*>(sums[k].data() + i * stride) : nullptr; };
  for_chunks(chunks, [&](int64_t i) {
    Scratch row(2 * stride * static_cast<int64_t>(sizeof(A)));
    fn(a, prm.p, i * per, std::min(a.rows, (i + 1) * per), row.get(), at(0, i), at(1, i), at(2, i));
  });
  for (int k = 0; k < 3; ++k) {
    if (!outs[k]) continue;
    A* out = static_cast<A*>(outs[k]);
    const A* s = sums[k].data();
    for (int64_t c = 0; c < H; ++c) out[c] = s[c];
    for (int64_t i = 1; i < chunks; ++i)
      for (int64_t c = 0; c < H; ++c) out[c] += s[i * stride + c];
  }
}

}  // namespace
}  // namespace cpu

void cpu_norm_forward(NormArgs& a) {
  if (a.rows * a.hidden == 0) return;
  if (a.dtype == DType::Float64) cpu::forward<double>(a);
  else cpu::forward<float>(a);
}

void cpu_norm_backward(NormArgs& a) {
  if (a.rows * a.hidden == 0) return;
  if (a.dtype == DType::Float64) cpu::backward<double>(a);
  else cpu::backward<float>(a);
}

}  // namespace dropout_ext

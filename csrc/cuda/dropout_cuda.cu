// CUDA kernels of the dropout_ext ops. The Philox and threshold arithmetic come from
// ../philox.h, the same header the CPU kernels use, so for a given (key, base) every
// backend draws the same mask, whatever the grid.
//
// Work unit: 8 consecutive elements per thread iteration = two Philox blocks = one byte
// of the packed mask, so a thread owns whole mask bytes and no atomics are needed.
// Loads and stores are vectorised (16 bytes or more per access) when every pointer is
// aligned to the unit; the last, partial unit and unaligned tensors take a scalar path.
// The grid is sized from the multiprocessor count with a grid-stride loop; indices are
// 64-bit. (key, base) come either by value (a CPU rng tensor, e.g. from seed=) or from
// device memory (an rng tensor drawn on the GPU with the CUDA generator): the kernel reads
// it at run time, so a replayed CUDA graph uses the values drawn in that replay.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../common.h"
#include "../pass_args.h"

namespace dropout_ext {
namespace cuda {
namespace {

constexpr int kUnit = 8;  // elements per thread iteration (one mask byte)
constexpr int kThreads = 256;

template <typename T>
struct alignas(sizeof(T) * kUnit) Unit {
  T v[kUnit];
};

__device__ __forceinline__ MaskParams load_mask(const PassArgs& a) {
  MaskParams m = a.mask;
  if (a.rng) {
    m.key = static_cast<uint64_t>(a.rng[0]);
    m.base = static_cast<uint64_t>(a.rng[1]);
  }
  return m;
}

// Keep bits of elements 8u .. 8u+7 drawn from Philox (bits past numel are zero).
__device__ __forceinline__ uint8_t draw_byte(const MaskParams& m, int64_t u, int valid) {
  if (m.drop_all) return 0;
  const Philox4 w0 = philox_block(m, static_cast<uint64_t>(2 * u));
  const Philox4 w1 = philox_block(m, static_cast<uint64_t>(2 * u + 1));
  uint32_t byte = 0;
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    byte |= static_cast<uint32_t>(w0.v[q] >= m.threshold) << q;
    byte |= static_cast<uint32_t>(w1.v[q] >= m.threshold) << (q + 4);
  }
  return static_cast<uint8_t>(valid >= 8 ? byte : byte & ((1u << valid) - 1u));
}

template <typename T, Op OP>
__device__ __forceinline__ T apply_one(const PassArgs& a, T x, T r, int64_t i, at::opmath_type<T> f) {
  using acc_t = at::opmath_type<T>;
  acc_t v = static_cast<acc_t>(x);
  if (OP == Op::BiasDropoutAdd) v = v + static_cast<acc_t>(static_cast<const T*>(a.bias)[i % a.bias_len]);
  v = v * f;
  if (OP != Op::Dropout) v = static_cast<acc_t>(r) + v;
  return static_cast<T>(v);
}

// One pass over the data. FROM_BITS: the mask is read from bits_in (word i / group);
// else drawn from Philox (group == 1) and optionally written to bits_out.
template <typename T, Op OP, bool FROM_BITS>
__global__ void __launch_bounds__(kThreads) pass_kernel(const PassArgs a) {
  using acc_t = at::opmath_type<T>;
  const MaskParams m = load_mask(a);
  const acc_t scale = static_cast<acc_t>(sizeof(T) == 8 ? m.scale_d : m.scale_f);
  const T* x = static_cast<const T*>(a.x);
  const T* res = static_cast<const T*>(a.residual);
  T* out = static_cast<T*>(a.out);
  const int64_t units = (a.numel + kUnit - 1) / kUnit;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t u = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; u < units; u += stride) {
    const int64_t i0 = u * kUnit;
    const int valid = static_cast<int>(a.numel - i0 < kUnit ? a.numel - i0 : kUnit);
    uint32_t keep = 0;
    if (FROM_BITS) {
      if (a.group == 1) {
        keep = a.bits_in[u];
      } else {
        for (int q = 0; q < valid; ++q) {
          const int64_t g = (i0 + q) / a.group;
          keep |= ((a.bits_in[g >> 3] >> (g & 7)) & 1u) << q;
        }
      }
    } else {
      keep = draw_byte(m, u, valid);
      if (a.bits_out) a.bits_out[u] = static_cast<uint8_t>(keep);
    }
    if (a.vec && valid == kUnit) {
      const Unit<T> xv = reinterpret_cast<const Unit<T>*>(x)[u];
      Unit<T> rv;
      if (OP != Op::Dropout) rv = reinterpret_cast<const Unit<T>*>(res)[u];
      Unit<T> ov;
#pragma unroll
      for (int q = 0; q < kUnit; ++q) {
        const acc_t f = ((keep >> q) & 1u) ? scale : acc_t(0);
        ov.v[q] = apply_one<T, OP>(a, xv.v[q], OP != Op::Dropout ? rv.v[q] : T(0), i0 + q, f);
      }
      reinterpret_cast<Unit<T>*>(out)[u] = ov;
    } else {
      for (int q = 0; q < valid; ++q) {
        const acc_t f = ((keep >> q) & 1u) ? scale : acc_t(0);
        out[i0 + q] = apply_one<T, OP>(a, x[i0 + q], OP != Op::Dropout ? res[i0 + q] : T(0), i0 + q, f);
      }
    }
  }
}

// Keep bits of mask words [0, words) (channel-wise and per-sample dropout).
__global__ void __launch_bounds__(kThreads) fill_bits_kernel(const PassArgs a, int64_t words) {
  const MaskParams m = load_mask(a);
  const int64_t units = (words + kUnit - 1) / kUnit;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t u = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; u < units; u += stride) {
    const int valid = static_cast<int>(words - u * kUnit < kUnit ? words - u * kUnit : kUnit);
    a.bits_out[u] = draw_byte(m, u, valid);
  }
}

__global__ void philox_kernel(const int64_t* counter, const int64_t* key, int64_t* out, int64_t rows) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  const Philox4 w = philox4x32_10(static_cast<uint32_t>(counter[4 * r]), static_cast<uint32_t>(counter[4 * r + 1]),
                                  static_cast<uint32_t>(counter[4 * r + 2]), static_cast<uint32_t>(counter[4 * r + 3]),
                                  static_cast<uint32_t>(key[0]), static_cast<uint32_t>(key[1]));
  for (int q = 0; q < 4; ++q) out[4 * r + q] = w.v[q];
}

int grid_for(int64_t units) {
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t blocks = (units + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(blocks, int64_t(sms) * 8)));
}

bool aligned(const void* p, int64_t bytes) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % bytes == 0; }

template <typename T, Op OP, bool FROM_BITS>
void launch(PassArgs a) {
  if (a.numel == 0) return;
  const int64_t unit_bytes = int64_t(sizeof(T)) * kUnit;
  a.vec = aligned(a.x, unit_bytes) && aligned(a.out, unit_bytes) && aligned(a.residual, unit_bytes);
  const int64_t units = (a.numel + kUnit - 1) / kUnit;
  pass_kernel<T, OP, FROM_BITS><<<grid_for(units), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// (key, base): by value from a CPU rng tensor, or a pointer into a CUDA one.
void set_rng(PassArgs& a, const at::Tensor& rng, const at::Tensor& input, double p, bool scale_train) {
  check_rng(rng);
  if (rng.device().is_cpu()) {
    a.mask = mask_params_from_cpu(rng, p, scale_train);
  } else {
    TORCH_CHECK(rng.device() == input.device(), "dropout_ext: rng must be on the CPU or on the input's device ",
                input.device(), ", got ", rng.device());
    TORCH_CHECK(rng.is_contiguous(), "dropout_ext: rng must be contiguous");
    a.mask = make_mask_params(0, 0, p, scale_train);
    a.rng = rng.data_ptr<int64_t>();
  }
}

void check_cuda(const at::Tensor& t, const at::Tensor& input, const char* what) {
  TORCH_CHECK(t.device() == input.device(), "dropout_ext: ", what, " must be on ", input.device(), ", got ", t.device());
}

// Fills the words' bits first when the op is channel-wise, then streams the data.
void run(const at::Tensor& x, bool from_bits, PassArgs a) {
  const int64_t words = a.numel / a.group;
  at::Tensor scratch;
  if (!from_bits && a.group > 1) {
    uint8_t* bits = a.bits_out;
    if (!bits) {
      scratch = at::empty({(words + 7) / 8}, x.options().dtype(at::kByte));
      bits = scratch.data_ptr<uint8_t>();
    }
    PassArgs f = a;
    f.bits_out = bits;
    if (words > 0) {
      fill_bits_kernel<<<grid_for((words + 7) / 8), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(f, words);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    a.bits_in = bits;
    a.bits_out = nullptr;
    from_bits = true;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dropout_ext_cuda", [&] {
    if (from_bits) launch<scalar_t, Op::Dropout, true>(a);
    else launch<scalar_t, Op::Dropout, false>(a);
  });
}

PassArgs base_args(const at::Tensor& x, const at::Tensor& out, int64_t group) {
  PassArgs a;
  a.x = x.data_ptr();
  a.out = out.data_ptr();
  a.numel = x.numel();
  a.group = group;
  return a;
}

std::tuple<at::Tensor, at::Tensor> dropout_cuda(const at::Tensor& input, const at::Tensor& rng, double p,
                                                bool scale_train, int64_t group, bool save_bits) {
  check_floating(input, "input");
  check_p(p);
  const int64_t words = mask_words(input, group);
  c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous();
  OutputBuffers o = make_output(input);
  at::Tensor bits = new_bits(input, words, save_bits);
  PassArgs a = base_args(x, o.work, group);
  set_rng(a, rng, input, p, scale_train);
  a.bits_out = save_bits ? bits.data_ptr<uint8_t>() : nullptr;
  run(x, false, a);
  o.finish();
  return {o.out, bits};
}

at::Tensor dropout_inplace_cuda(at::Tensor& input, const at::Tensor& rng, double p, bool scale_train, int64_t group,
                                bool save_bits) {
  check_floating(input, "input");
  check_p(p);
  const int64_t words = mask_words(input, group);
  c10::cuda::CUDAGuard guard(input.device());
  at::Tensor bits = new_bits(input, words, save_bits);
  const at::Tensor x = input.contiguous();
  at::Tensor work = x.is_same(input) ? input : at::empty_like(x);
  PassArgs a = base_args(x, work, group);
  set_rng(a, rng, input, p, scale_train);
  a.bits_out = save_bits ? bits.data_ptr<uint8_t>() : nullptr;
  run(x, false, a);
  if (!work.is_same(input)) input.copy_(work);
  return bits;
}

at::Tensor apply_mask_bits_cuda(const at::Tensor& input, const at::Tensor& bits, double p, bool scale_train,
                                int64_t group) {
  check_floating(input, "input");
  check_p(p);
  const int64_t words = mask_words(input, group);
  TORCH_CHECK(bits.scalar_type() == at::kByte && bits.numel() == (words + 7) / 8,
              "dropout_ext: bits must be a uint8 tensor of ", (words + 7) / 8, " bytes");
  check_cuda(bits, input, "bits");
  c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous();
  const at::Tensor b = bits.contiguous();
  OutputBuffers o = make_output(input);
  PassArgs a = base_args(x, o.work, group);
  a.mask = make_mask_params(0, 0, p, scale_train);
  a.bits_in = b.data_ptr<uint8_t>();
  run(x, true, a);
  o.finish();
  return o.out;
}

std::tuple<at::Tensor, at::Tensor> fused_cuda(Op op, const at::Tensor& input, const at::Tensor* bias,
                                              const at::Tensor& residual, const at::Tensor& rng, double p,
                                              bool save_bits) {
  check_floating(input, "input");
  check_p(p);
  check_same(input, residual, "residual");
  if (bias) check_bias(input, *bias);
  c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous();
  const at::Tensor r = residual.contiguous();
  const at::Tensor b = bias ? bias->contiguous() : at::Tensor();
  OutputBuffers o = make_output(input);
  at::Tensor bits = new_bits(input, input.numel(), save_bits);
  PassArgs a = base_args(x, o.work, 1);
  set_rng(a, rng, input, p, /*scale_train=*/true);
  a.residual = r.data_ptr();
  if (bias) {
    a.bias = b.data_ptr();
    a.bias_len = std::max<int64_t>(1, b.numel());
  }
  a.bits_out = save_bits ? bits.data_ptr<uint8_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dropout_ext_fused_cuda", [&] {
    if (op == Op::DropoutAdd) launch<scalar_t, Op::DropoutAdd, false>(a);
    else launch<scalar_t, Op::BiasDropoutAdd, false>(a);
  });
  o.finish();
  return {o.out, bits};
}

std::tuple<at::Tensor, at::Tensor> dropout_add_cuda(const at::Tensor& input, const at::Tensor& residual,
                                                    const at::Tensor& rng, double p, bool save_bits) {
  return fused_cuda(Op::DropoutAdd, input, nullptr, residual, rng, p, save_bits);
}

std::tuple<at::Tensor, at::Tensor> bias_dropout_add_cuda(const at::Tensor& input, const at::Tensor& bias,
                                                         const at::Tensor& residual, const at::Tensor& rng, double p,
                                                         bool save_bits) {
  return fused_cuda(Op::BiasDropoutAdd, input, &bias, residual, rng, p, save_bits);
}

at::Tensor philox_cuda(const at::Tensor& counter, const at::Tensor& key) {
  TORCH_CHECK(counter.scalar_type() == at::kLong && counter.dim() >= 1 && counter.size(-1) == 4,
              "dropout_ext: counter must be int64 of shape [..., 4]");
  check_rng(key);
  check_cuda(key, counter, "key");
  c10::cuda::CUDAGuard guard(counter.device());
  const at::Tensor c = counter.contiguous();
  const at::Tensor k = key.contiguous();
  at::Tensor out = at::empty_like(c);
  const int64_t rows = c.numel() / 4;
  if (rows > 0) {
    philox_kernel<<<(rows + 255) / 256, 256, 0, at::cuda::getCurrentCUDAStream()>>>(
        c.data_ptr<int64_t>(), k.data_ptr<int64_t>(), out.data_ptr<int64_t>(), rows);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return out;
}

}  // namespace
}  // namespace cuda
}  // namespace dropout_ext

TORCH_LIBRARY_IMPL(dropout_ext, CUDA, m) {
  using namespace dropout_ext::cuda;
  m.impl("dropout", &dropout_cuda);
  m.impl("dropout_", &dropout_inplace_cuda);
  m.impl("apply_mask_bits", &apply_mask_bits_cuda);
  m.impl("dropout_add", &dropout_add_cuda);
  m.impl("bias_dropout_add", &bias_dropout_add_cuda);
  m.impl("philox4x32_10", &philox_cuda);
}

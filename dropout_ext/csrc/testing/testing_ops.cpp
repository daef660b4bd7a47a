// The development-only ops of the testing module (testing.h), in its namespace
// dropout_ext_testing:
//   philox4x32_10(Tensor counter, Tensor key) -> Tensor
//       the compiled Philox4x32-10 (../philox.h) on int64 words, for the known-answer tests
//   set_cuda_tuning(int unroll, bool persistent) -> ()
//   cuda_tuning() -> (int, bool)
//       the flat CUDA kernel's configuration (FlatTuning) that the emulator and the tunable
//       CUDA launcher use, for the GPU bench's sweep and the tests; the product's is fixed
//       (../cuda/dispatch.h)
//   set_norm_smem_budget(int bytes) -> ()
//       the shared memory a block of the emulated norm kernels may take (0: the GPU's), so
//       that small rows reach the paths without a row cache or shared column sums
//   norm_last_plan() -> int[]
//       the plan of the last emulated norm launch: [backward, group, rows_per_block, kmax,
//       vec, cache, acc_smem, slots, blocks] (norm_emulation.cpp)
#include "testing.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "../philox.h"

namespace DX_NS {

FlatTuning& flat_tuning() {
  static FlatTuning t;
  return t;
}

namespace {

using at::Tensor;

Tensor philox_kernel(const Tensor& counter, const Tensor& key) {
  TORCH_CHECK(counter.scalar_type() == at::kLong && counter.dim() >= 1 && counter.size(-1) == 4,
              "dropout_ext: counter must be int64 of shape [..., 4]");
  TORCH_CHECK(key.scalar_type() == at::kLong && key.numel() == 2, "dropout_ext: key must be int64 of two elements");
  const Tensor c = counter.cpu().contiguous();
  const Tensor k = key.cpu().contiguous();
  Tensor out = at::empty_like(c);
  const int64_t* cp = c.data_ptr<int64_t>();
  const int64_t* kp = k.data_ptr<int64_t>();
  int64_t* op = out.data_ptr<int64_t>();
  for (int64_t r = 0; r < c.numel() / 4; ++r) {
    const Philox4 w = philox4x32_10(static_cast<uint32_t>(cp[4 * r]), static_cast<uint32_t>(cp[4 * r + 1]),
                                    static_cast<uint32_t>(cp[4 * r + 2]), static_cast<uint32_t>(cp[4 * r + 3]),
                                    static_cast<uint32_t>(kp[0]), static_cast<uint32_t>(kp[1]));
    for (int q = 0; q < 4; ++q) op[4 * r + q] = w.v[q];
  }
  return out.to(counter.device());
}

void set_cuda_tuning(int64_t unroll, bool persistent) {
  TORCH_CHECK_VALUE(unroll == 1 || unroll == 2 || unroll == 4, "dropout_ext: unroll must be 1, 2 or 4, got ", unroll);
  FlatTuning& t = flat_tuning();
  t.unroll = static_cast<int>(unroll);
  t.persistent = persistent;
}

std::tuple<int64_t, bool> cuda_tuning() {
  const FlatTuning& t = flat_tuning();
  return {t.unroll, t.persistent};
}

void set_norm_smem_budget(int64_t bytes) {
  TORCH_CHECK_VALUE(bytes >= 0, "dropout_ext: the shared memory budget must be >= 0, got ", bytes);
  NormEmulation& e = norm_emulation();
  std::lock_guard<std::mutex> lock(e.m);
  e.smem_budget = bytes;
}

std::vector<int64_t> norm_last_plan() {
  NormEmulation& e = norm_emulation();
  std::lock_guard<std::mutex> lock(e.m);
  const NormEmulation::Plan& p = e.last;
  return {p.backward, p.group, p.rows_per_block, p.kmax, p.vec, p.cache, p.acc_smem, p.slots, p.blocks};
}

}  // namespace
}  // namespace DX_NS

TORCH_LIBRARY_FRAGMENT(DX_NS, m) {
  m.def("philox4x32_10(Tensor counter, Tensor key) -> Tensor");
  m.def("set_cuda_tuning(int unroll, bool persistent) -> ()", &DX_NS::set_cuda_tuning);
  m.def("cuda_tuning() -> (int, bool)", &DX_NS::cuda_tuning);
  m.def("set_norm_smem_budget(int bytes) -> ()", &DX_NS::set_norm_smem_budget);
  m.def("norm_last_plan() -> int[]", &DX_NS::norm_last_plan);
}

// Any device: the kernel computes on the CPU and returns on the counter's device.
TORCH_LIBRARY_IMPL(DX_NS, CompositeExplicitAutograd, m) { m.impl("philox4x32_10", &DX_NS::philox_kernel); }

// The fused dropout + add + norm CUDA kernels (../cuda/norm_kernel.cuh) run on the host, for
// the tests: the testing module's cpu_norm_forward / cpu_norm_backward (../launch.h), so
// that torch.ops.dropout_ext_testing.dropout_add_norm(_backward) on CPU tensors runs the
// CUDA kernels' own code for every block and thread (emulator.h: threads as fibers meeting
// at __syncthreads and warp shuffles, shared memory poisoned, 16-byte accesses checked for
// alignment), through the plan and dispatch of ../cuda/norm_plan.h.
//
// Differences from the GPU launcher (../cuda/norm_launch.cu), each to reach every code path
// with small tensors: the grid is capped at three blocks, so that blocks loop over rows
// (more than 3 rows, or 24 in warp mode); the shared memory budget is kNormSmemBudget unless
// set_norm_smem_budget lowers it (the row cache and the shared column sums then give way to
// global memory at small sizes); the partial sums start poisoned (uninitialized on the GPU).
// bits_out is zeroed here where atomics OR into it (the glue zeroes it on CUDA only).
// norm_last_plan tells the tests which paths the last launch took.
#include "testing.h"

#include <ATen/ATen.h>

#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "../cuda/norm_plan.h"
#include "../launch.h"
#include "emulator.h"

namespace DX_NS {

NormEmulation& norm_emulation() {
  static NormEmulation e;
  return e;
}

}  // namespace DX_NS

namespace dropout_ext {
namespace cuda {
namespace {

using emu::HostCtx;

// 64-byte aligned host memory (a Unit<double>'s alignment).
struct HostBuffer {
  std::unique_ptr<unsigned char[]> raw;
  unsigned char* ptr = nullptr;
  explicit HostBuffer(size_t bytes) : raw(new unsigned char[bytes + 64]) {
    ptr = raw.get() + (64 - reinterpret_cast<uintptr_t>(raw.get()) % 64) % 64;
  }
};

struct NormHostLauncher {
  emu::Errors err;
  std::vector<std::unique_ptr<HostBuffer>> scratches;
  bool backward = false;

  int64_t smem_budget() const {
    const int64_t b = ::DX_NS::norm_emulation().smem_budget;
    return b > 0 ? b : kNormSmemBudget;
  }
  template <typename T, typename TH, bool BWD>
  int64_t max_blocks(const NormPlan&) {
    return 3;
  }
  void record(int64_t blocks, const NormPlan& p) {
    ::DX_NS::NormEmulation& e = ::DX_NS::norm_emulation();
    std::lock_guard<std::mutex> lock(e.m);
    e.last = {backward, p.group, p.rows_per_block, p.kmax, p.vec, p.cache, p.acc_smem, p.slots, blocks};
  }
  template <typename T, typename TH>
  void fwd(int64_t blocks, const NormArgs& a, const NormPlan& p) {
    record(blocks, p);
    HostBuffer sh(static_cast<size_t>(p.smem));
    emu::run_blocks(err, blocks, p.threads, sh.ptr, static_cast<size_t>(p.smem),
                    [&](const HostCtx& c) { norm_fwd_body<T, TH>(c, a, p, sh.ptr); });
  }
  template <typename T, typename TH>
  void bwd(int64_t blocks, const NormArgs& a, const NormPlan& p, at::opmath_type<T>* partials) {
    record(blocks, p);
    HostBuffer sh(static_cast<size_t>(p.smem));
    emu::run_blocks(err, blocks, p.threads, sh.ptr, static_cast<size_t>(p.smem),
                    [&](const HostCtx& c) { norm_bwd_body<T, TH>(c, a, p, sh.ptr, partials); });
  }
  template <typename A>
  void colsum(int64_t blocks, const NormArgs& a, const NormPlan& p, const A* partials) {
    A red[kColsumThreads];
    emu::run_blocks(err, blocks, kColsumThreads, red, sizeof(red),
                    [&](const HostCtx& c) { norm_colsum_body<A>(c, a, p, partials, red); });
  }
  template <typename A>
  A* scratch(int64_t elems) {
    const size_t bytes = static_cast<size_t>(elems) * sizeof(A);
    scratches.emplace_back(new HostBuffer(bytes));
    std::memset(scratches.back()->ptr, 0xA5, bytes);  // uninitialized on the GPU
    return reinterpret_cast<A*>(scratches.back()->ptr);
  }
  void bits_out_ready(uint8_t* bits, int64_t bytes) { std::memset(bits, 0, static_cast<size_t>(bytes)); }
  void rng(const NormArgs& a) { resolve_mask(HostCtx{0, 0, 1, nullptr, &err}, a); }
};

}  // namespace
}  // namespace cuda
}  // namespace dropout_ext

namespace DX_NS {

void cpu_norm_forward(NormArgs& a) {
  ::dropout_ext::cuda::NormHostLauncher l;
  ::dropout_ext::cuda::run_norm<::dropout_ext::cuda::NormHostLauncher, false>(l, a);
  TORCH_CHECK(!l.err.bad.load(), "dropout_ext: CUDA kernel emulation: ", l.err.msg);
}

void cpu_norm_backward(NormArgs& a) {
  ::dropout_ext::cuda::NormHostLauncher l;
  l.backward = true;
  ::dropout_ext::cuda::run_norm<::dropout_ext::cuda::NormHostLauncher, true>(l, a);
  TORCH_CHECK(!l.err.bad.load(), "dropout_ext: CUDA kernel emulation: ", l.err.msg);
}

}  // namespace DX_NS

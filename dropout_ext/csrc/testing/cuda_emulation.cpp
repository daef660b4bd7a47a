// The CUDA kernels (../cuda/flat_kernel.cuh, ../cuda/tile_kernel.cuh) run on the host, for
// the tests: the CPU launcher of the testing module (launch.h, namespace
// dropout_ext_testing), so that the CPU kernels of torch.ops.dropout_ext_testing are the
// CUDA kernels. The Python API runs on them under dropout_ext._backend.use("emulator") (the
// tests' CPU path "cuda-emu", tests/testing.py).
//
// A launch runs the kernels' own code for every block and thread of its grid, through the
// dispatch of ../cuda/dispatch.h with the testing module's flat-kernel configuration
// (tuning.h; set_cuda_tuning switches it): the tile kernel's grid is the one the CUDA
// launcher uses; the flat kernel's is capped at three blocks (max_blocks), so that larger
// tensors go through its grid-stride loop, as the persistent grid does on the GPU. The flat
// kernel needs no barrier and runs its threads one after the other. The tile kernel runs
// through emulator.h: a block's kThreads threads as fibers that meet at each __syncthreads
// (OS threads at a real barrier under AddressSanitizer), with the block's shared memory
// poisoned before each block. 16-byte vector accesses are checked for
// the alignment the GPU requires. So the CPU test suite checks the CUDA kernels' index
// arithmetic, bit packing, shared-memory use and alignment, bit for bit, on machines
// without a GPU. What it cannot check: timing, the memory model beyond barriers and
// atomics, and nvcc's code generation.
#include "testing.h"

#include <ATen/ATen.h>

#include <cstring>

// The flat kernel copies a thread's next units (PIPE) whether or not they were loaded; the
// ones not loaded (past the last whole unit) are never read, which g++ cannot prove.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "../cuda/dispatch.h"
#include "../cuda/flat_kernel.cuh"
#include "../cuda/tile_kernel.cuh"
#include "../launch.h"
#include "emulator.h"

namespace dropout_ext {
namespace cuda {
namespace {

using emu::Errors;
using emu::HostCtx;

struct HostLauncher {
  Errors err;
  template <typename T, Op OP, bool FROM_BITS, int UNROLL, bool PIPE, int MODE>
  void flat(int64_t blocks, const PassArgs& a, const FlatPlan& p) {
    for (int64_t b = 0; b < blocks; ++b)
      for (int t = 0; t < kThreads; ++t)
        flat_body<T, OP, FROM_BITS, UNROLL, PIPE, MODE>(HostCtx{t, b, blocks, nullptr, &err}, a, p);
  }
  // Three blocks, whatever the kernel: tensors of more than 3 * kThreads * UNROLL units run
  // the grid-stride loop (several iterations per thread), smaller ones one iteration.
  template <typename T, Op OP, bool FROM_BITS, int UNROLL, bool PIPE, int MODE>
  int64_t max_blocks(bool) {
    return 3;
  }
  // The tile kernel's blocks, their threads at barriers (emulator.h).
  template <typename T, Op OP>
  void tile(int64_t blocks, const PassArgs& a, const TilePlan& plan) {
    TileShared sh;
    emu::run_blocks(err, blocks, kThreads, &sh, sizeof(sh),
                    [&](const HostCtx& c) { tile_body<T, OP>(c, a, plan, sh); });
  }
  void zero(uint8_t* bits, int64_t bytes) { std::memset(bits, 0, static_cast<size_t>(bytes)); }
};

}  // namespace
}  // namespace cuda
}  // namespace dropout_ext

namespace DX_NS {

bool cpu_try_channel_pass(PassArgs& a) {
  ::dropout_ext::cuda::HostLauncher l;
  const bool ran = ::dropout_ext::cuda::try_channel_pass(l, a, flat_tuning());
  TORCH_CHECK(!l.err.bad.load(), "dropout_ext: CUDA kernel emulation: ", l.err.msg);
  return ran;
}

void cpu_run_pass(PassArgs& a) {
  if (a.g.numel == 0) return;
  ::dropout_ext::cuda::HostLauncher l;
  ::dropout_ext::cuda::run_pass(l, a, flat_tuning());
  TORCH_CHECK(!l.err.bad.load(), "dropout_ext: CUDA kernel emulation: ", l.err.msg);
}

}  // namespace DX_NS

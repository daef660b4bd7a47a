// What the testing module's own sources share: the check that they are compiled for its
// namespace, and the flat CUDA kernel's configuration that its launchers read.
//
// The testing module (dropout_ext._testing, built when DROPOUT_EXT_TESTING is set; see
// setup.py) registers the ops of the product under a second namespace, dropout_ext_testing,
// compiled from the same ops.cpp and autograd.cpp (ops.cpp, autograd.cpp and draw_rng.cpp
// here include them, so that their objects do not collide with the product's), with other
// launchers (../launch.h):
//   CPU   the CUDA kernels run on the host (cuda_emulation.cpp);
//   CUDA  a copy of ../cuda/launch.cu whose flat-kernel configuration can be switched
//         (launch_tunable.cu; built with DROPOUT_EXT_TESTING=cuda), for the GPU bench's
//         sweep.
// Besides them it defines the development-only ops (testing_ops.cpp): philox4x32_10,
// set_cuda_tuning / cuda_tuning, and set_norm_smem_budget / norm_last_plan. None of this is in the product's wheel.
#pragma once

#if !defined(DX_NS)
#error "the testing module is compiled with -DDX_NS=dropout_ext_testing (setup.py, dropout_ext/_build.py)"
#endif

#include <cstdint>
#include <mutex>

#include "../cuda/dispatch.h"
#include "../ns.h"

namespace DX_NS {

// The flat kernel's configuration (../cuda/dispatch.h), switched at run time: the product's
// compile-time choice until set_cuda_tuning changes it. The emulator and the tunable CUDA
// launcher read it at each launch.
struct FlatTuning {
  static constexpr bool kTunable = true;
  // units of 8 elements per thread per iteration of the forward dropout: 1, 2 or 4
  int unroll = ::dropout_ext::cuda::kFlatUnroll;
  // the 16-bit kernels that draw Philox (PIPE): a grid of only the resident blocks
  bool persistent = ::dropout_ext::cuda::kFlatPersistent;
};

FlatTuning& flat_tuning();

// The emulated norm kernels' knob and report (norm_emulation.cpp; the ops
// set_norm_smem_budget and norm_last_plan of testing_ops.cpp).
struct NormEmulation {
  std::mutex m;
  int64_t smem_budget = 0;  // shared memory a block may take; 0: the GPU's kNormSmemBudget
  struct Plan {             // the last launch's norm plan (cuda/norm_kernel.cuh, NormPlan)
    bool backward = false;
    int group = 0, rows_per_block = 0;
    int64_t kmax = 0;
    bool vec = false, cache = false, acc_smem = false;
    int64_t slots = 0, blocks = 0;
  } last;
};

NormEmulation& norm_emulation();

}  // namespace DX_NS

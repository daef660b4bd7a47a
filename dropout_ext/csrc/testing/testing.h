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
// Besides them it defines the development-only ops (testing_ops.cpp): philox4x32_10 and
// set_cuda_tuning / cuda_tuning. None of this is in the product's wheel.
#pragma once

#if !defined(DX_NS)
#error "the testing module is compiled with -DDX_NS=dropout_ext_testing (setup.py, dropout_ext/_build.py)"
#endif

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

}  // namespace DX_NS

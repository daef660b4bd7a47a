// CPU launchers of the fused dropout + add + norm ops (../launch.h, ../norm_args.h), until
// their kernels land: a clear error.
#include "../launch.h"

namespace dropout_ext {

void cpu_norm_forward(NormArgs&) {
  TORCH_CHECK(false, "dropout_ext: dropout_add_norm on the CPU is not implemented yet");
}

void cpu_norm_backward(NormArgs&) {
  TORCH_CHECK(false, "dropout_ext: dropout_add_norm_backward on the CPU is not implemented yet");
}

}  // namespace dropout_ext

// The testing module's launchers of the fused dropout + add + norm ops (../launch.h): its
// CPU kernels are the emulated CUDA kernels, which do not exist yet, so a clear error.
// Replaced by the emulator of the CUDA kernels.
#include "testing.h"

#include "../launch.h"

namespace DX_NS {

void cpu_norm_forward(NormArgs&) {
  TORCH_CHECK(false, "dropout_ext: the emulated CUDA kernel of dropout_add_norm is not implemented yet");
}

void cpu_norm_backward(NormArgs&) {
  TORCH_CHECK(false, "dropout_ext: the emulated CUDA kernel of dropout_add_norm_backward is not implemented yet");
}

#ifdef DROPOUT_EXT_WITH_CUDA
// The tunable CUDA launcher (launch_tunable.cu, DROPOUT_EXT_TESTING=cuda) has none either.
void cuda_norm_forward(NormArgs&) {
  TORCH_CHECK(false, "dropout_ext: dropout_add_norm on CUDA is not implemented yet");
}

void cuda_norm_backward(NormArgs&) {
  TORCH_CHECK(false, "dropout_ext: dropout_add_norm_backward on CUDA is not implemented yet");
}
#endif

}  // namespace DX_NS

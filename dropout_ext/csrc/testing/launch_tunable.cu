// ../cuda/launch.cu for the testing module's namespace (testing.h), with the flat kernel's
// configuration read at each launch from the knobs set_cuda_tuning switches: the GPU
// bench's sweep runs torch.ops.dropout_ext_testing ops after each setting. Compiles every
// unroll variant of the forward dropout (1, 2 and 4).
#include "testing.h"

#define DX_CUDA_TUNING ::DX_NS::flat_tuning()
#include "../cuda/launch.cu"

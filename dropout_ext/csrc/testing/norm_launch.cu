// ../cuda/norm_launch.cu for the testing module's namespace (testing.h): the fused norm ops
// of torch.ops.dropout_ext_testing on CUDA tensors (built with DROPOUT_EXT_TESTING=cuda).
// The norm kernels have no tunable configuration: the same kernels as the product's.
#include "testing.h"

#include "../cuda/norm_launch.cu"

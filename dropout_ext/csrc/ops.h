// The op schemas (declared in ops.cpp) and the kernel signatures shared by the CPU and
// CUDA dispatch keys and by autograd.cpp.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace dropout_ext {

// The op schemas are defined once, in dropout_ext/_ops.py (SCHEMAS, with the meaning of
// their arguments); this extension registers kernels for them.
using OptTensor = std::optional<at::Tensor>;
using OptGenerator = std::optional<at::Generator>;
using OptInts = at::OptionalIntArrayRef;

std::tuple<at::Tensor, at::Tensor> dropout_kernel(const at::Tensor& input, const OptTensor& rng,
                                                  const OptGenerator& gen, double p, int64_t kind, int64_t lead,
                                                  int64_t save, OptInts global_shape, OptInts global_offset);
void dropout_inplace_kernel(at::Tensor& input, const OptTensor& rng, const OptGenerator& gen, double p,
                            int64_t kind, int64_t lead, OptInts global_shape, OptInts global_offset);
std::tuple<at::Tensor, at::Tensor> dropout_add_kernel(const at::Tensor& input, const at::Tensor& residual,
                                                      const OptTensor& rng, const OptGenerator& gen, double p,
                                                      int64_t save, OptInts global_shape, OptInts global_offset);
std::tuple<at::Tensor, at::Tensor> bias_dropout_add_kernel(const at::Tensor& input, const at::Tensor& bias,
                                                           const at::Tensor& residual, const OptTensor& rng,
                                                           const OptGenerator& gen, double p, int64_t save,
                                                           OptInts global_shape, OptInts global_offset);
at::Tensor dropout_backward_kernel(const at::Tensor& grad, const at::Tensor& saved, double p, int64_t kind,
                                   int64_t lead, OptInts global_shape, OptInts global_offset, OptInts strides);

}  // namespace dropout_ext

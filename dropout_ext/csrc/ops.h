// The kernel signatures of the ops, shared by the CPU and CUDA dispatch keys (ops.cpp), by
// autograd.cpp and by python.cpp, in the namespace of the module that compiles them (ns.h).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

#include "ns.h"

namespace DX_NS {

using OptTensor = std::optional<at::Tensor>;
using OptGenerator = std::optional<at::Generator>;
using OptInts = at::OptionalIntArrayRef;

// The arguments, as the schemas (declared in Python: dropout_ext/_ops.py, SCHEMAS) name them:
//  rng      int64[2] (key, base) as data (seed=, or drawn in Python under torch.compile);
//           None: drawn from `generator` (or the device's default one) in C++.
//  kind     0: out = x * keep / (1 - p); 1: x * keep; 2: alpha dropout (SELU).
//  lead     the leading dims that index the mask: input.dim() for element-wise dropout,
//           2 for channel-wise (N, C), 1 for drop_path and unbatched channel dropout.
//  save     what the second output holds for backward: 0 nothing (an empty uint8 tensor),
//           1 the packed keep bits (uint8, ceil(words / 8)), 2 the (key, base) pair (int64[2]).
//           An input that requires grad needs 1 or 2 (the Autograd kernel checks).
//  global_shape, global_offset  the input is the shard at global_offset of a tensor of
//           global_shape: its mask is that shard's slice of the full tensor's mask.
//  strides  (backward) the gradient's strides: those of the forward output.
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
// The fused dropout + add + LayerNorm / RMSNorm (norm_args.h): (out, h, mean, rstd, saved)
// and its backward (grad_input, grad_h_total, grad_weight, grad_bias, grad_input_bias).
using NormResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
NormResult dropout_add_norm_kernel(const at::Tensor& input, const OptTensor& residual, const OptTensor& weight,
                                   const OptTensor& bias, const OptTensor& input_bias, const OptTensor& rng,
                                   const OptGenerator& gen, double p, double eps, bool rms, bool residual_in_fp32,
                                   int64_t save, OptInts global_shape, OptInts global_offset);
NormResult dropout_add_norm_backward_kernel(const at::Tensor& grad_out, const OptTensor& grad_h, const at::Tensor& h,
                                            const OptTensor& weight, const OptTensor& bias, const at::Tensor& mean,
                                            const at::Tensor& rstd, const at::Tensor& saved, double p, bool rms,
                                            bool input_bias_grad, OptInts global_shape, OptInts global_offset);

}  // namespace DX_NS

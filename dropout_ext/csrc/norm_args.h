// What one call of the fused dropout + add + norm ops computes (docs/design.md, "Fused
// dropout + residual + norm"), shared by the CPU and CUDA kernels. Torch-free, like
// pass_args.h.
//
// The tensors are seen as (rows, hidden) matrices: element (r, c) of an operand is at
// ptr + r * row_stride + c (elements; the last dim is contiguous, a row stride of 0 is an
// expanded operand). Outputs are contiguous. Per row, with acc = double for float64 and
// float otherwise and f = keep ? scale : 0:
//   forward   h = round_h(residual + ((x + input_bias) * f))   (each term optional)
//             LayerNorm: mean, rstd = 1 / sqrt(var + eps); out = (h - mean) * rstd * w + b
//             RMSNorm:   rstd = 1 / sqrt(mean(h^2) + eps);     out = h * rstd * w
//   backward  xhat = (h - mean) * rstd (RMSNorm: h * rstd), g = dy * w,
//             dh = rstd * (g - mean(g) - xhat * mean(g * xhat)) (RMSNorm: no mean(g) term)
//                  + grad_h,
//             grad_h_total = dh, grad_input = dh * f; the parameters' gradients are the
//             column sums of dy * xhat, dy and dh * f.
// The mask word of element (r, c) is row_word(r) + c: the logical index of the element in
// the (global) input, so h equals dropout_add's output bit for bit. Bit r * hidden + c of
// the packed keep mask is the element's (the layout every op saves).
#pragma once

#include <cstdint>

#include "pass_args.h"

namespace dropout_ext {

constexpr int kNormMaxLead = 8;

// Global row index of local row r: the leading dims of a row shard (global_shape[:-1] at
// global_offset[:-1]), row-major in the global leading shape. Without a shard it is r.
struct RowMap {
  int nlead = 0;  // 0: no shard, global row = r
  int64_t size[kNormMaxLead] = {};     // local leading sizes
  int64_t gstride[kNormMaxLead] = {};  // row-major strides of the global leading shape
  int64_t first = 0;                   // global row of local row 0

  DX_HOST_DEVICE int64_t global_row(int64_t r) const {
    if (nlead == 0) return r;
    int64_t g = first;
    for (int d = nlead - 1; d >= 0; --d) {
      const int64_t i = r % size[d];
      r /= size[d];
      g += i * gstride[d];
    }
    return g;
  }
};

struct NormArgs {
  DType dtype = DType::Float32;     // input, residual (unless res_f32), input_bias, out, grad_out
  bool h_f32 = false;               // h (and grad_h, grad_h_total) in float32 (residual_in_fp32, 16-bit input)
  bool res_f32 = false;             // residual in float32
  bool param_f32 = false;           // weight and bias in float32 (else the input's dtype)
  bool rms = false;
  int64_t rows = 0, hidden = 0;
  double eps = 1e-5;
  RowMap rowmap;
  MaskParams mask;
  RngSource rng;                    // CUDA: (key, base) read when the kernel runs
  int64_t* rng_out = nullptr;       // CUDA: the resolved (key, base) is written here when set

  // forward
  const void* x = nullptr;          int64_t x_rs = 0;
  const void* residual = nullptr;   int64_t res_rs = 0;   // may be null
  const void* input_bias = nullptr;                       // contiguous (hidden,), may be null
  const void* weight = nullptr;                           // contiguous (hidden,), may be null
  const void* bias = nullptr;                             // contiguous (hidden,), may be null
  void* out = nullptr;              // contiguous (rows, hidden), input dtype
  void* h = nullptr;                // contiguous (rows, hidden), h dtype
  void* mean = nullptr;             // (rows,) acc type; null for RMSNorm
  void* rstd = nullptr;             // (rows,) acc type
  uint8_t* bits_out = nullptr;      // packed keep bits (zeroed by the caller on CUDA), or null

  // backward (h, mean, rstd, weight as above, read)
  const void* grad_out = nullptr;   int64_t dy_rs = 0;
  const void* grad_h = nullptr;     int64_t dh_rs = 0;    // may be null
  const uint8_t* bits_in = nullptr; // keep from these bits, else drawn from mask/rng
  void* grad_input = nullptr;       // contiguous, input dtype
  void* grad_h_total = nullptr;     // contiguous, h dtype
  void* grad_weight = nullptr;      // (hidden,) acc type, or null
  void* grad_bias = nullptr;        // (hidden,) acc type, or null
  void* grad_input_bias = nullptr;  // (hidden,) acc type, or null
};

}  // namespace dropout_ext

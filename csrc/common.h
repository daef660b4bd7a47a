// Checks and helpers shared by the CPU and CUDA glue. The Python API validates
// arguments first (with torch's wording); these checks guard direct torch.ops calls.
#pragma once

#include <ATen/ATen.h>

#include "philox.h"

namespace dropout_ext {

inline void check_floating(const at::Tensor& t, const char* what) {
  const auto s = t.scalar_type();
  TORCH_CHECK_TYPE(s == at::kHalf || s == at::kBFloat16 || s == at::kFloat || s == at::kDouble,
                   "dropout_ext: ", what, " must be float16, bfloat16, float32 or float64, got ",
                   s);
}

inline void check_p(double p) {
  TORCH_CHECK_VALUE(p >= 0.0 && p <= 1.0,
                    "dropout probability has to be between 0 and 1, but got ", p);
}

inline void check_rng(const at::Tensor& rng) {
  TORCH_CHECK(rng.scalar_type() == at::kLong && rng.numel() == 2,
              "dropout_ext: rng must be an int64 tensor of two elements (key, base), got ",
              rng.scalar_type(), " with ", rng.numel(), " elements");
}

// (key, base) from a CPU rng tensor.
inline MaskParams mask_params_from_cpu(const at::Tensor& rng, double p, bool scale_train) {
  check_rng(rng);
  TORCH_CHECK(rng.device().is_cpu(), "dropout_ext: rng must be a CPU tensor here");
  const auto r = rng.contiguous();
  const int64_t* v = r.data_ptr<int64_t>();
  return make_mask_params(static_cast<uint64_t>(v[0]), static_cast<uint64_t>(v[1]), p, scale_train);
}

// Number of mask words for `numel` elements with `group` elements per word.
inline int64_t mask_words(const at::Tensor& input, int64_t group) {
  TORCH_CHECK(group >= 1, "dropout_ext: group must be >= 1, got ", group);
  TORCH_CHECK(input.numel() % group == 0, "dropout_ext: group ", group,
              " does not divide the number of elements ", input.numel());
  return input.numel() / group;
}

inline at::Tensor new_bits(const at::Tensor& like, int64_t words, bool save) {
  return at::empty({save ? (words + 7) / 8 : 0}, like.options().dtype(at::kByte));
}

inline void check_same(const at::Tensor& a, const at::Tensor& b, const char* name) {
  TORCH_CHECK(a.sizes() == b.sizes(), "dropout_ext: ", name, " must have the input's shape ",
              a.sizes(), ", got ", b.sizes());
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "dropout_ext: ", name,
              " must have the input's dtype ", a.scalar_type(), ", got ", b.scalar_type());
  TORCH_CHECK(a.device() == b.device(), "dropout_ext: ", name, " must be on the input's device ",
              a.device(), ", got ", b.device());
}

inline void check_bias(const at::Tensor& input, const at::Tensor& bias) {
  TORCH_CHECK(input.dim() >= 1, "dropout_ext: bias_dropout_add needs an input of at least one dimension");
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == input.size(-1),
              "dropout_ext: bias must be 1-D with the input's last dimension (", input.size(-1),
              "), got shape ", bias.sizes());
  TORCH_CHECK(bias.scalar_type() == input.scalar_type(), "dropout_ext: bias must have the input's dtype ",
              input.scalar_type(), ", got ", bias.scalar_type());
  TORCH_CHECK(bias.device() == input.device(), "dropout_ext: bias must be on the input's device ",
              input.device(), ", got ", bias.device());
}

// An output with the input's memory format (as torch.empty_like) and, when that is not
// row-major, the row-major buffer the kernel writes (copied into the output after).
struct OutputBuffers {
  at::Tensor out;
  at::Tensor work;
  void finish() {
    if (!work.is_same(out)) out.copy_(work);
  }
};

// True when torch.empty_like(t) has exactly the row-major strides of t's shape.
inline bool empty_like_is_rowmajor(const at::Tensor& t) {
  if (!t.is_non_overlapping_and_dense()) return t.suggest_memory_format() == at::MemoryFormat::Contiguous;
  int64_t expected = 1;
  for (int64_t d = t.dim() - 1; d >= 0; --d) {
    if (t.stride(d) != expected) return false;
    expected *= t.size(d);
  }
  return true;
}

// `alloc(like)` returns a row-major tensor of like's shape and options.
template <typename Alloc>
OutputBuffers make_output(const at::Tensor& input, Alloc&& alloc) {
  OutputBuffers o;
  if (empty_like_is_rowmajor(input)) {
    o.out = o.work = alloc(input);
  } else {
    o.out = at::empty_like(input);
    o.work = alloc(input);
  }
  return o;
}

inline OutputBuffers make_output(const at::Tensor& input) {
  return make_output(input, [](const at::Tensor& like) { return at::empty(like.sizes(), like.options()); });
}

}  // namespace dropout_ext

// The operator schemas. Kernels register per dispatch key in cpu/ and cuda/; fake
// kernels and autograd are registered from Python (dropout_ext/_ops.py). The Python
// fallback declares the same schemas under `dropout_ext_py` (tests check they match).
#include <Python.h>
#include <torch/library.h>

// Importing `dropout_ext._C` loads this library and runs the registrations below; the
// ops are then reached through torch.ops.dropout_ext, so no Python bindings are needed.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}

TORCH_LIBRARY(dropout_ext, m) {
  // out = input * keep * scale with keep from Philox(rng); bits = packed keep mask when
  // save_bits, else an empty tensor. `group` elements share one mask word.
  m.def("dropout(Tensor input, Tensor rng, float p, bool scale_train, int group, bool save_bits) -> (Tensor, Tensor)");
  m.def("dropout_(Tensor(a!) input, Tensor rng, float p, bool scale_train, int group, bool save_bits) -> Tensor");
  // out = input * keep * scale with keep read from packed bits (backward from bits).
  m.def("apply_mask_bits(Tensor input, Tensor bits, float p, bool scale_train, int group) -> Tensor");
  // residual + dropout(input), and residual + dropout(input + bias), in one pass.
  m.def("dropout_add(Tensor input, Tensor residual, Tensor rng, float p, bool save_bits) -> (Tensor, Tensor)");
  m.def("bias_dropout_add(Tensor input, Tensor bias, Tensor residual, Tensor rng, float p, bool save_bits) -> (Tensor, Tensor)");
  // Raw Philox4x32-10: counter int64[..., 4] and key int64[2] holding uint32 words.
  m.def("philox4x32_10(Tensor counter, Tensor key) -> Tensor");
}

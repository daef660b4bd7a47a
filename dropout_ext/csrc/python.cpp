// The Python module of the extension: its import runs the kernel registrations (ops.cpp,
// autograd.cpp, cpu/, cuda/), and four entry points for the public API's common cases
// (plain tensors, (key, base) from the default generator or from seed=, no shard): they
// parse their few arguments and make one typed dispatcher call, which skips the boxing of
// torch.ops' generic Python path but still goes through every dispatch key (autograd,
// autocast, Python modes). An argument that is not a plain torch.Tensor (a subclass such
// as DTensor, or not a tensor) returns NotImplemented: the caller (dropout_ext/_route.py)
// then takes the torch.ops route, which handles those and raises the errors.
#include <Python.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/pybind.h>

#include <initializer_list>
#include <string>

#include "ops.h"

namespace dropout_ext {
namespace {

template <typename Sig>
const c10::TypedOperatorHandle<Sig>& handle(const char* name) {
  // one handle per signature: each entry point below asks for one op
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
  return op;
}

// True when every argument is a plain torch.Tensor.
bool plain(PyObject* const* args, Py_ssize_t n) {
  for (Py_ssize_t i = 0; i < n; ++i)
    if (!THPVariable_CheckExact(args[i])) return false;
  return true;
}

// `save` (the backward storage the API asks for) when a gradient will be needed, else 0:
// a call that no gradient flows through keeps nothing.
int64_t save_arg(PyObject* obj, std::initializer_list<const at::Tensor*> tensors) {
  const long long v = PyLong_AsLongLong(obj);
  if (v == -1 && PyErr_Occurred()) throw python_error();
  if (!at::GradMode::is_enabled()) return 0;
  for (const at::Tensor* t : tensors)
    if (t->requires_grad()) return v;
  return 0;
}

double double_arg(PyObject* obj) {
  const double v = PyFloat_AsDouble(obj);
  if (v == -1.0 && PyErr_Occurred()) throw python_error();
  return v;
}

int64_t int_arg(PyObject* obj) {
  const long long v = PyLong_AsLongLong(obj);
  if (v == -1 && PyErr_Occurred()) throw python_error();
  return v;
}

void check_nargs(Py_ssize_t nargs, Py_ssize_t want, const char* name) {
  if (nargs != want)
    throw torch::TypeError(std::string("dropout_ext._C.") + name + " takes " + std::to_string(want) + " arguments");
}

// The dropout op on a plain tensor, with (key, base) from the default generator (rng
// null) or from a CPU int64 tensor; args: input, [rng,] p, kind, save.
PyObject* dropout_call(PyObject* const* args, Py_ssize_t nargs, bool with_rng, const char* name) {
  check_nargs(nargs, with_rng ? 5 : 4, name);
  if (!plain(args, with_rng ? 2 : 1)) Py_RETURN_NOTIMPLEMENTED;
  const at::Tensor& input = THPVariable_Unpack(args[0]);
  std::optional<at::Tensor> rng;
  if (with_rng) rng = THPVariable_Unpack(args[1]);
  const int i = with_rng ? 2 : 1;
  const double p = double_arg(args[i]);
  const int64_t kind = int_arg(args[i + 1]), save = save_arg(args[i + 2], {&input});
  at::Tensor out;
  {
    pybind11::gil_scoped_release no_gil;
    out = std::get<0>(handle<decltype(dropout_kernel)>("dropout_ext::dropout")
                          .call(input, rng, std::nullopt, p, kind, input.dim(), save, std::nullopt, std::nullopt));
  }
  return THPVariable_Wrap(std::move(out));
}

// dropout(input, p, kind, save) -> Tensor
PyObject* py_dropout(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  return dropout_call(args, nargs, false, "dropout");
  END_HANDLE_TH_ERRORS
}

// dropout_rng(input, rng, p, kind, save) -> Tensor: (key, base) from a CPU int64 tensor
// (seed=: the Python layer keeps one per seed)
PyObject* py_dropout_rng(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  return dropout_call(args, nargs, true, "dropout_rng");
  END_HANDLE_TH_ERRORS
}

// dropout_add(input, residual, p, save) -> Tensor
PyObject* py_dropout_add(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  check_nargs(nargs, 4, "dropout_add");
  if (!plain(args, 2)) Py_RETURN_NOTIMPLEMENTED;
  const at::Tensor& input = THPVariable_Unpack(args[0]);
  const at::Tensor& residual = THPVariable_Unpack(args[1]);
  const double p = double_arg(args[2]);
  const int64_t save = save_arg(args[3], {&input, &residual});
  at::Tensor out;
  {
    pybind11::gil_scoped_release no_gil;
    out = std::get<0>(handle<decltype(dropout_add_kernel)>("dropout_ext::dropout_add")
                          .call(input, residual, std::nullopt, std::nullopt, p, save, std::nullopt, std::nullopt));
  }
  return THPVariable_Wrap(std::move(out));
  END_HANDLE_TH_ERRORS
}

// bias_dropout_add(input, bias, residual, p, save) -> Tensor
PyObject* py_bias_dropout_add(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  check_nargs(nargs, 5, "bias_dropout_add");
  if (!plain(args, 3)) Py_RETURN_NOTIMPLEMENTED;
  const at::Tensor& input = THPVariable_Unpack(args[0]);
  const at::Tensor& bias = THPVariable_Unpack(args[1]);
  const at::Tensor& residual = THPVariable_Unpack(args[2]);
  const double p = double_arg(args[3]);
  const int64_t save = save_arg(args[4], {&input, &bias, &residual});
  at::Tensor out;
  {
    pybind11::gil_scoped_release no_gil;
    out = std::get<0>(handle<decltype(bias_dropout_add_kernel)>("dropout_ext::bias_dropout_add")
                          .call(input, bias, residual, std::nullopt, std::nullopt, p, save, std::nullopt,
                                std::nullopt));
  }
  return THPVariable_Wrap(std::move(out));
  END_HANDLE_TH_ERRORS
}

PyMethodDef methods[] = {
    {"dropout", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_dropout)), METH_FASTCALL,
     "dropout(input, p, kind, save): the op with (key, base) from the default generator; save applies when a gradient is needed"},
    {"dropout_rng", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_dropout_rng)), METH_FASTCALL,
     "dropout_rng(input, rng, p, kind, save): the op with (key, base) from a CPU int64 tensor"},
    {"dropout_add", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_dropout_add)), METH_FASTCALL,
     "dropout_add(input, residual, p, save)"},
    {"bias_dropout_add", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_bias_dropout_add)),
     METH_FASTCALL, "bias_dropout_add(input, bias, residual, p, save)"},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, C10_STRINGIZE(TORCH_EXTENSION_NAME), nullptr, -1, methods};

}  // namespace
}  // namespace dropout_ext

// PyInit__C for the prebuilt extension, PyInit_<name> for the JIT build (build()).
#define DX_CONCAT_(a, b) a##b
#define DX_CONCAT(a, b) DX_CONCAT_(a, b)
PyMODINIT_FUNC DX_CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) { return PyModule_Create(&dropout_ext::module_def); }

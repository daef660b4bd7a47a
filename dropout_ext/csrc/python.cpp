// The Python module of the extension: its import runs the op registrations (ops.cpp,
// autograd.cpp, cpu/, cuda/), and four entry points for the public API's common cases
// (a plain tensor, (key, base) from the default generator or from seed=, no shard): they
// parse their few arguments and make one typed dispatcher call, which skips the boxing of
// torch.ops' generic Python path but still goes through every dispatch key (autograd,
// autocast, Python modes). torch.compile, torch.func, generator=, shards and tensor
// subclasses use torch.ops.dropout_ext instead (dropout_ext/functional.py).
#include <Python.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/pybind.h>

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

// A plain torch.Tensor argument (subclasses take the torch.ops route).
const at::Tensor& tensor_arg(PyObject* obj, const char* name) {
  if (!THPVariable_CheckExact(obj)) {
    throw torch::TypeError(std::string("dropout_ext: ") + name + " must be a torch.Tensor");
  }
  return THPVariable_Unpack(obj);
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
  const at::Tensor& input = tensor_arg(args[0], "input");
  std::optional<at::Tensor> rng;
  if (with_rng) rng = tensor_arg(args[1], "rng");
  const int i = with_rng ? 2 : 1;
  const double p = double_arg(args[i]);
  const int64_t kind = int_arg(args[i + 1]), save = int_arg(args[i + 2]);
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
  const at::Tensor& input = tensor_arg(args[0], "input");
  const at::Tensor& residual = tensor_arg(args[1], "residual");
  const double p = double_arg(args[2]);
  const int64_t save = int_arg(args[3]);
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
  const at::Tensor& input = tensor_arg(args[0], "input");
  const at::Tensor& bias = tensor_arg(args[1], "bias");
  const at::Tensor& residual = tensor_arg(args[2], "residual");
  const double p = double_arg(args[3]);
  const int64_t save = int_arg(args[4]);
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
     "dropout(input, p, kind, save): the op with (key, base) from the default generator"},
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

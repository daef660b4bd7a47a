// The Python module of the testing module (dropout_ext._testing): its import runs the
// registrations of the dropout_ext_testing kernels (testing.h). The Python layer declares
// that namespace's schemas first (dropout_ext/_ops.py) and imports it only when asked
// (dropout_ext._backend).
#include <Python.h>

#include <c10/macros/Macros.h>

#include "testing.h"

namespace {
PyModuleDef module_def = {PyModuleDef_HEAD_INIT, C10_STRINGIZE(TORCH_EXTENSION_NAME), nullptr, -1, nullptr};
}  // namespace

#define DX_CONCAT_(a, b) a##b
#define DX_CONCAT(a, b) DX_CONCAT_(a, b)
PyMODINIT_FUNC DX_CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) { return PyModule_Create(&module_def); }

// The namespace of the ops that ops.cpp and autograd.cpp define: the C++ namespace of their
// functions and the op namespace of their registrations (torch.ops.<DX_NS>). The product
// (_C) compiles them as `dropout_ext`; the testing module (testing/, built with
// DROPOUT_EXT_TESTING=1) compiles the same sources again with -DDX_NS=dropout_ext_testing,
// beside its own launchers (the CUDA kernels run on the host by the emulator, and a CUDA
// launcher whose flat-kernel configuration can be switched). The launcher functions of
// launch.h live in DX_NS too, so that each module's ops call its own launchers.
//
// The op schemas are not declared in C++: the Python layer declares them for both
// namespaces from one table (dropout_ext/_ops.py, SCHEMAS); the C++ side registers kernels.
#pragma once

#ifndef DX_NS
#define DX_NS dropout_ext
#endif

#define DX_STRINGIFY_(x) #x
#define DX_STRINGIFY(x) DX_STRINGIFY_(x)
// "<namespace>::<op>", for dispatcher lookups of this module's own ops.
#define DX_OP_NAME(op) DX_STRINGIFY(DX_NS) "::" op

// The types and helpers shared by every module (pass_args.h, index.h, philox.h) stay in
// dropout_ext; DX_NS sees them unqualified.
namespace dropout_ext {}
namespace DX_NS {
using namespace ::dropout_ext;
}

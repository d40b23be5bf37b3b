// radargate._core: the extension module. radargate::error becomes ValueError with the library's
// one-line message; the array checks of binding.hpp raise TypeError (dtype, device) or ValueError
// (shape).
#include <nanobind/nanobind.h>

#include "binding.hpp"
#include "radargate/cpu.hpp"

namespace radargate {
namespace python {

std::string dtype_string(const nb::dlpack::dtype& t) {
  const char* kind = "?";
  switch (nb::dlpack::dtype_code(t.code)) {
    case nb::dlpack::dtype_code::Int:
      kind = "int";
      break;
    case nb::dlpack::dtype_code::UInt:
      kind = "uint";
      break;
    case nb::dlpack::dtype_code::Float:
      kind = "float";
      break;
    case nb::dlpack::dtype_code::Bfloat:
      kind = "bfloat";
      break;
    case nb::dlpack::dtype_code::Complex:
      kind = "complex";
      break;
    case nb::dlpack::dtype_code::Bool:
      return "bool";
    default:
      break;
  }
  return std::string(kind) + std::to_string(int(t.bits)) + (t.lanes != 1 ? "x" + std::to_string(int(t.lanes)) : "");
}

std::string device_string(int device_type) {
  if (device_type == nb::device::cpu::value) return "the CPU";
  if (device_type == nb::device::cuda::value) return "a CUDA device";
  if (device_type == nb::device::cuda_host::value) return "CUDA pinned host memory";
  return "device type " + std::to_string(device_type);
}

void type_fail(const std::string& message) { throw nb::type_error(message.c_str()); }
void value_fail(const std::string& message) { throw nb::value_error(message.c_str()); }

}  // namespace python
}  // namespace radargate

NB_MODULE(_core, m) {
  namespace nb = nanobind;
  using namespace radargate::python;
  m.doc() = "radargate's C++ library (header-only) bound with nanobind; use the radargate package around it.";
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const radargate::error& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });
  // Objects held by module globals of other frameworks (torch) may outlive this module at exit;
  // nanobind's leak report would then be noise, not a reference-counting bug.
  nb::set_leak_warnings(false);
  m.attr("cpu_gemm_route") = radargate::cpu_gemm_route();
#ifdef RADARGATE_PYTHON_CUDA
  m.attr("has_cuda") = true;
  bind_layer_cuda(m);
#else
  m.attr("has_cuda") = false;
#endif
  bind_layer_f32(m);
  bind_layer_f64(m);
  bind_files(m);
  bind_geometry(m);
}

// python/src/binding.hpp -- shared by the translation units of the radargate._core extension.
//
// Arrays cross as nb::ndarray: nanobind imports a NumPy array through the buffer protocol or
// DLPack and a torch.Tensor through DLPack, without a copy; the library then reads and writes
// that memory through radargate::View (pointer, shape and strides in elements). Every check on
// an array happens here, before any view is made, and fails with a Python exception whose one
// line names the array, what was expected and what was found.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>

#include <cstdint>
#include <string>
#include <vector>

#include "radargate.hpp"

namespace radargate {
namespace python {

namespace nb = nanobind;

/// A read-only array of any dtype, rank and device (checked by the functions below).
using InArray = nb::ndarray<nb::ro>;
/// An array the library writes (y, gradients). It is imported as read-only all the same: nanobind
/// then asks NumPy and torch for their plain (unversioned) DLPack capsule first, which both give at
/// once, where a writable import would first ask for a versioned one, which NumPy 1.24 and torch
/// 1.13 refuse with a TypeError, and retry, on every call (docs/PYTHON.md). The package allocates
/// every output itself, so no read-only memory reaches this type.
using OutArray = nb::ndarray<nb::ro>;

template <class S>
constexpr const char* dtype_name() {
  return sizeof(S) == 4 ? "float32" : "float64";
}

std::string dtype_string(const nb::dlpack::dtype& t);
std::string device_string(int device_type);

template <class A>
std::string shape_string(const A& a) {
  std::string s = "[";
  for (size_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + "]";
}

[[noreturn]] void type_fail(const std::string& message);
/// A layer configuration from the JSON text of a file's radargate.config, validated by the
/// library (io::parse_config; defined in files.cpp, so that nvcc never compiles the JSON parser).
LayerConfig parse_layer_config(const std::string& json);
[[noreturn]] void value_fail(const std::string& message);

/// Checks dtype S, the CPU and rank R, and returns the view (strides as they come).
template <class S, int R, class A>
View<const S, R> in_view(const A& a, const std::string& name) {
  if (a.device_type() != nb::device::cpu::value)
    type_fail("array '" + name + "': expected memory on the CPU, found " + device_string(a.device_type()) +
              " (this backend runs on the CPU)");
  if (a.dtype() != nb::dtype<S>())
    type_fail("array '" + name + "': expected dtype " + dtype_name<S>() + ", found " + dtype_string(a.dtype()));
  if (a.ndim() != size_t(R))
    value_fail("array '" + name + "': expected a rank-" + std::to_string(R) + " array, found shape " + shape_string(a));
  View<const S, R> v;
  v.data = static_cast<const S*>(a.data());
  for (int i = 0; i < R; ++i) {
    v.shape[i] = index_t(a.shape(size_t(i)));
    v.stride[i] = index_t(a.stride(size_t(i)));
  }
  // An empty array may come with a null pointer; it is present all the same.
  static const S anchor{};
  if (!v.data) v.data = &anchor;
  return v;
}

template <class S, int R, class A>
View<S, R> out_view(const A& a, const std::string& name) {
  View<const S, R> c = in_view<S, R>(a, name);
  View<S, R> v;
  v.data = const_cast<S*>(c.data);
  for (int i = 0; i < R; ++i) {
    v.shape[i] = c.shape[i];
    v.stride[i] = c.stride[i];
    if (c.shape[i] > 1 && c.stride[i] == 0)
      value_fail("array '" + name + "': written to, so expected no zero (broadcast) stride, found one in dimension " +
                 std::to_string(i));
  }
  return v;
}

void bind_layer_f32(nb::module_& m);
void bind_layer_f64(nb::module_& m);
void bind_files(nb::module_& m);
void bind_geometry(nb::module_& m);
#ifdef RADARGATE_PYTHON_CUDA
void bind_layer_cuda(nb::module_& m);
#endif

}  // namespace python
}  // namespace radargate

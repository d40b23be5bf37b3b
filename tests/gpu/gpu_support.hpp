// Support for the GPU tests and benchmarks: owning device buffers, host <-> device copies with
// conversion to the storage type, and models uploaded as Params over device memory.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include <radargate.hpp>
#include <radargate/cuda.cuh>

namespace rggpu {
using radargate::index_t;

inline void cuda_ok(cudaError_t e, const char* what) {
  if (e != cudaSuccess) radargate::detail::fail("CUDA error ", cudaGetErrorString(e), " in ", what);
}

/// Returns the number of CUDA devices, 0 when there is none or no driver.
inline int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

template <class S>
float to_f(S v) {
  return radargate::detail::gpu::to_float(v);
}
template <class S>
S from_f(double v) {
  return radargate::detail::gpu::from_float<S>(float(v));
}
template <>
inline float from_f<float>(double v) {
  return float(v);
}

/// An owning device array.
template <class T>
struct DeviceArray {
  T* ptr = nullptr;
  std::size_t n = 0;
  DeviceArray() = default;
  explicit DeviceArray(std::size_t count) : n(count) {
    if (n) cuda_ok(cudaMalloc(&ptr, n * sizeof(T)), "cudaMalloc");
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  DeviceArray(DeviceArray&& o) noexcept : ptr(o.ptr), n(o.n) {
    o.ptr = nullptr;
    o.n = 0;
  }
  DeviceArray& operator=(DeviceArray&& o) noexcept {
    std::swap(ptr, o.ptr);
    std::swap(n, o.n);
    return *this;
  }
  ~DeviceArray() {
    if (ptr) cudaFree(ptr);
  }
  void upload(const std::vector<T>& h) {
    cuda_ok(cudaMemcpy(ptr, h.data(), n * sizeof(T), cudaMemcpyHostToDevice), "upload");
  }
  std::vector<T> download() const {
    std::vector<T> h(n);
    if (n) cuda_ok(cudaMemcpy(h.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost), "download");
    return h;
  }
};

/// Rounds doubles through S (the values the device sees) and back to double.
template <class S>
std::vector<double> round_through(const std::vector<double>& v) {
  std::vector<double> o(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) o[i] = double(to_f(from_f<S>(v[i])));
  return o;
}

template <class S>
std::vector<S> to_storage(const std::vector<double>& v) {
  std::vector<S> o(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) o[i] = from_f<S>(v[i]);
  return o;
}

template <class S>
std::vector<double> to_double(const std::vector<S>& v) {
  std::vector<double> o(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) o[i] = double(to_f(v[i]));
  return o;
}

/// A model's tensors on the device in storage type S, and Params views over them.
template <class S>
struct DeviceModel {
  std::map<std::string, DeviceArray<S>> t;
  std::map<std::string, std::vector<index_t>> shapes;
  radargate::Params<S> params;

  explicit DeviceModel(const radargate::Model<double>& m) {
    for (const auto& kv : m.tensors) {
      DeviceArray<S> a(kv.second.data.size());
      a.upload(to_storage<S>(kv.second.data));
      shapes[kv.first] = kv.second.shape;
      t.emplace(kv.first, std::move(a));
    }
    radargate::for_each_param(params, [&](const char* name, auto& v) {
      using V = std::decay_t<decltype(v)>;
      auto it = t.find(name);
      if (it == t.end()) return;
      v.data = it->second.ptr;
      const auto& sh = shapes[name];
      index_t st = 1;
      for (int k = V::rank - 1; k >= 0; --k) {
        v.shape[k] = sh[k];
        v.stride[k] = st;
        st *= sh[k];
      }
    });
  }
};

/// Device gradient buffers for the named parameters (and x when with_x).
template <class S>
struct DeviceGrads {
  std::map<std::string, DeviceArray<S>> t;
  DeviceArray<S> x;
  radargate::Gradients<S> views;

  DeviceGrads(const DeviceModel<S>& m, const std::vector<std::string>& names, bool with_x, index_t T, index_t d_in) {
    if (with_x) {
      x = DeviceArray<S>(std::size_t(T * d_in));
      views.x = radargate::make_view(x.ptr, T, d_in);
    }
    radargate::for_each_param(views, [&](const char* name, auto& v) {
      using V = std::decay_t<decltype(v)>;
      bool want = false;
      for (const auto& n : names) want = want || n == name;
      auto it = m.shapes.find(name);
      if (!want || it == m.shapes.end()) return;
      std::size_t n = 1;
      for (index_t e : it->second) n *= std::size_t(e);
      auto& buf = t[name] = DeviceArray<S>(n);
      v.data = buf.ptr;
      index_t st = 1;
      for (int k = V::rank - 1; k >= 0; --k) {
        v.shape[k] = it->second[k];
        v.stride[k] = st;
        st *= it->second[k];
      }
    });
  }
  /// Fills every buffer with the value v (a poison such as NaN, or a start for accumulation).
  void fill(const std::vector<double>& pattern) {
    auto put = [&](DeviceArray<S>& a) {
      std::vector<S> h(a.n);
      for (std::size_t i = 0; i < a.n; ++i) h[i] = from_f<S>(pattern[i % pattern.size()]);
      a.upload(h);
    };
    if (x.n) put(x);
    for (auto& kv : t) put(kv.second);
  }
};

}  // namespace rggpu

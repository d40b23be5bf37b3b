// radargate/detail/support.cuh -- storage types, error checks and workspace carving for the CUDA
// backend.
//
// Storage type S is what parameters, activations and gradients are stored in; arithmetic is
// float32 throughout:
//   float          float32 storage, float32 arithmetic (no tensor cores, exact tanh)
//   __nv_bfloat16  bf16 storage; products on bf16 tensor cores with float32 accumulation
//   __half         fp16 storage; products on fp16 tensor cores with float32 accumulation
#pragma once

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <utility>

#include <radargate/config.hpp>
#include <radargate/error.hpp>

namespace radargate {
namespace detail {
namespace gpu {

template <class S>
struct storage;
template <>
struct storage<float> {
  static constexpr bool tensor_cores = false;  // products by float32 FMAs, bit-for-bit float32
  static constexpr bool fast_math = false;     // accurate tanh
  static constexpr cudaDataType_t cuda_type = CUDA_R_32F;
  static constexpr const char* name = "float32";
};
template <>
struct storage<__nv_bfloat16> {
  static constexpr bool tensor_cores = true;
  static constexpr bool fast_math = true;
  static constexpr cudaDataType_t cuda_type = CUDA_R_16BF;
  static constexpr const char* name = "bfloat16";
};
template <>
struct storage<__half> {
  static constexpr bool tensor_cores = true;
  static constexpr bool fast_math = true;
  static constexpr cudaDataType_t cuda_type = CUDA_R_16F;
  static constexpr const char* name = "float16";
};

__host__ __device__ inline float to_float(float v) { return v; }
__host__ __device__ inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__host__ __device__ inline float to_float(__half v) { return __half2float(v); }

template <class S>
__host__ __device__ inline S from_float(float v);
template <>
__host__ __device__ inline float from_float<float>(float v) {
  return v;
}
template <>
__host__ __device__ inline __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__host__ __device__ inline __half from_float<__half>(float v) {
  return __float2half_rn(v);
}

inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail("CUDA error ", cudaGetErrorName(e), " (", cudaGetErrorString(e), ") in ", what);
}
inline const char* cublas_status_name(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS:
      return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED:
      return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH:
      return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR:
      return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED:
      return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR:
      return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "CUBLAS_STATUS_NOT_SUPPORTED";
    default:
      return "cuBLAS error";
  }
}
inline void check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) fail("cuBLAS error ", cublas_status_name(s), " in ", what);
}
/// Checks the launch of the kernel just issued (bad configuration, missing device code).
inline void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

/// Every kernel of the backend is launched through here, so every launch is checked: the
/// configuration (grid, block, dynamic shared memory, stream), then the kernel's own arguments.
/// The name is the kernel's, for the error message.
template <class... Params, class... Args>
void launch(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t shared_bytes,
            cudaStream_t stream, Args&&... args) {
  kernel<<<grid, block, shared_bytes, stream>>>(std::forward<Args>(args)...);
  check_launch(name);
}

#define RG_CUDA_CHECK(expr) ::radargate::detail::gpu::check((expr), #expr)

/// Carves typed, 256-byte aligned arrays out of one caller-provided buffer. With a null base it
/// only counts bytes, so the size query and the real layout are the same code.
struct Carve {
  char* base = nullptr;
  std::size_t off = 0;
  template <class T>
  T* take(std::size_t n) {
    if (n == 0) return nullptr;
    off = (off + 255) & ~std::size_t(255);
    T* p = base ? reinterpret_cast<T*>(base + off) : nullptr;
    off += n * sizeof(T);
    return p;
  }
  std::size_t bytes() const { return (off + 255) & ~std::size_t(255); }
};

inline index_t round_up(index_t v, index_t m) { return (v + m - 1) / m * m; }
inline unsigned blocks_for(index_t n, int threads) {
  const index_t b = (n + threads - 1) / threads;
  return unsigned(b < 1 ? 1 : (b > 65535 * 64 ? 65535 * 64 : b));
}

}  // namespace gpu
}  // namespace detail
}  // namespace radargate

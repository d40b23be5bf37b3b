// radargate/config.hpp -- the one place that knows which compiler is reading the code.
//
// Every other header uses these macros and never tests __CUDACC__ itself, so the same per-element
// maths compiles for the host (and is tested there) and for the device.
#pragma once

#include <cstddef>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define RG_HOST_DEVICE __host__ __device__
#define RG_DEVICE_COMPILE 1
#else
#define RG_HOST_DEVICE
#define RG_DEVICE_COMPILE 0
#endif

#if defined(__CUDA_ARCH__)
#define RG_ON_DEVICE 1
#else
#define RG_ON_DEVICE 0
#endif

#if defined(_MSC_VER)
#define RG_INLINE __forceinline
#else
#define RG_INLINE inline __attribute__((always_inline))
#endif

#define RG_PRAGMA_(x) _Pragma(#x)
#if defined(__CUDA_ARCH__) || defined(__clang__)
#define RG_UNROLL RG_PRAGMA_(unroll)
#elif defined(__GNUC__)
#define RG_UNROLL RG_PRAGMA_(GCC unroll 8)
#else
#define RG_UNROLL
#endif

// Debug assertion: active on the host in debug builds, silent on the device (device code must not
// abort or throw; host entry points validate every shape before a kernel is launched).
#if !defined(NDEBUG) && !RG_ON_DEVICE
#include <cassert>
#define RG_ASSERT(cond) assert(cond)
#else
#define RG_ASSERT(cond) ((void)0)
#endif

namespace radargate {
/// Signed index type used for every extent and stride (as Eigen::Index and std::ptrdiff_t).
using index_t = std::ptrdiff_t;
}  // namespace radargate

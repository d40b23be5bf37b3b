// radargate/cpu/options.hpp -- what a user chooses about the cpu backend: its options
// (CpuOptions), its matrix-product route (Eigen or a BLAS) and the BLAS's own threads.
#pragma once

#include <atomic>
#include <cstdint>
#include <type_traits>

#include "../detail/cpu_half.hpp"
#include "../error.hpp"
#include "../layer_config.hpp"

// With RADARGATE_USE_BLAS (CMake option of the same name) Eigen hands the backend's matrix products
// to the linked BLAS (EIGEN_USE_BLAS). OpenBLAS's thread control is declared weak so that a
// program without OpenBLAS still links; see use_single_threaded_blas().
#if defined(EIGEN_USE_BLAS) && defined(__ELF__) && (defined(__GNUC__) || defined(__clang__))
extern "C" void openblas_set_num_threads(int) __attribute__((weak));
#define RADARGATE_DETAIL_OPENBLAS_WEAK 1
#endif

namespace radargate {

/// How the cpu backend runs its matrix products: "blas" when compiled with EIGEN_USE_BLAS (the
/// CMake option RADARGATE_USE_BLAS), else "eigen" (Eigen's own GEMM). Everything else is the same.
constexpr const char* cpu_gemm_route() noexcept {
#ifdef EIGEN_USE_BLAS
  return "blas";
#else
  return "eigen";
#endif
}

/// The cpu backend calls the BLAS from each of its own threads (CpuOptions::threads), so the
/// BLAS should run each call on the thread that makes it; a BLAS that starts threads of its own
/// oversubscribes the cores. When an OpenBLAS is linked into the program this asks it to
/// (openblas_set_num_threads(1)) and returns true. Otherwise it changes nothing and returns
/// false: set the BLAS's own control before the program starts (OPENBLAS_NUM_THREADS=1,
/// MKL_NUM_THREADS=1, OMP_NUM_THREADS=1). It is a process-wide setting of the BLAS, so the
/// backend never makes it by itself; the radargate tool and benchmarks call this at start.
inline bool use_single_threaded_blas() noexcept {
#ifdef RADARGATE_DETAIL_OPENBLAS_WEAK
  if (&openblas_set_num_threads != nullptr) {
    openblas_set_num_threads(1);
    return true;
  }
#endif
  return false;
}

/// Options of the cpu backend.
struct CpuOptions {
  int threads = 1;          // threads per call (>= 1); results are bit-identical for a given count
  index_t tile_planes = 0;  // rotation planes per tile (0: chosen from N, r and the L2 size)
  // lora.A and lora.B as the layer keeps them: in Scalar, or (Layer<float> only) rounded to bf16
  // or f16 at construction and weights_changed(), products accumulated in float; see
  // docs/CPU_BACKEND.md, "16-bit weights"
  WeightStorage weights = WeightStorage::scalar;
};

namespace detail {

inline std::uint64_t next_cpu_generation() {
  static std::atomic<std::uint64_t> counter{0};
  return ++counter;
}

/// The options, or a clear error naming the one that is out of range.
template <class S>
CpuOptions checked_cpu_options(const CpuOptions& o) {
  if (o.threads < 1) fail("cpu option 'threads': expected a value >= 1, found ", o.threads);
  if (o.tile_planes < 0) fail("cpu option 'tile_planes': expected a value >= 0, found ", o.tile_planes);
  if (o.weights != WeightStorage::scalar && !std::is_same<S, float>::value)
    fail(
        "cpu option 'weights': expected scalar for a Layer<double> (bf16 and f16 storage are for "
        "Layer<float>), found ",
        to_string(o.weights));
  return o;
}

}  // namespace detail
}  // namespace radargate

// src/cpu_dispatch.cpp -- runtime dispatch of the cpu backend (the radargate::cpu_dispatch target).
//
// Compiled with the program's own flags, this file holds the baseline build of the backend (SSE2
// on x86-64, NEON on aarch64, scalar elsewhere). On x86-64, src/cpu_arch.cpp adds an AVX2+FMA and an
// AVX-512 build; the first Layer<S, backend::cpu> chooses, once per process, the most capable one
// this CPU and its operating system support (__builtin_cpu_supports checks both). The environment
// variable RADARGATE_CPU_KERNELS (baseline, avx2, avx512; auto or empty: the best) overrides the
// choice, for tests and comparisons; asking for a set this CPU lacks is an error.
#include <cstdlib>
#include <cstring>
#include <string>

#include "radargate/cpu.hpp"

#if defined(RADARGATE_DISPATCH_X86)
namespace radargate {
namespace detail {
std::unique_ptr<CpuLayerBase<float>> cpu_entry_avx2_float(const LayerConfig&, const Params<float>&, const CpuOptions&);
std::unique_ptr<CpuLayerBase<double>> cpu_entry_avx2_double(const LayerConfig&, const Params<double>&,
                                                            const CpuOptions&);
const char* cpu_entry_avx2_kernels();
std::unique_ptr<CpuLayerBase<float>> cpu_entry_avx512_float(const LayerConfig&, const Params<float>&,
                                                            const CpuOptions&);
std::unique_ptr<CpuLayerBase<double>> cpu_entry_avx512_double(const LayerConfig&, const Params<double>&,
                                                              const CpuOptions&);
const char* cpu_entry_avx512_kernels();
}  // namespace detail
}  // namespace radargate
#endif

namespace radargate {
namespace detail {
namespace {

enum class Level { baseline, avx2, avx512 };

bool supported(Level l) {
#if defined(RADARGATE_DISPATCH_X86)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  if (l == Level::avx2) return avx2;
  if (l == Level::avx512)
    return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vl");
#endif
  return l == Level::baseline;
}

Level choose() {
  const char* env = std::getenv("RADARGATE_CPU_KERNELS");
  const std::string want = env ? env : "";
  if (want.empty() || want == "auto") {
    for (Level l : {Level::avx512, Level::avx2})
      if (supported(l)) return l;
    return Level::baseline;
  }
  Level l;
  if (want == "baseline")
    l = Level::baseline;
  else if (want == "avx2")
    l = Level::avx2;
  else if (want == "avx512")
    l = Level::avx512;
  else
    fail("environment variable RADARGATE_CPU_KERNELS: expected auto, baseline, avx2 or avx512, found '", want, "'");
  if (!supported(l))
    fail("environment variable RADARGATE_CPU_KERNELS: expected a kernel set that this build and CPU support (",
#if defined(RADARGATE_DISPATCH_X86)
         supported(Level::avx512) ? "baseline, avx2, avx512"
         : supported(Level::avx2) ? "baseline, avx2"
                                  : "baseline",
#else
         "baseline",
#endif
         "), found '", want, "'");
  return l;
}

// Chosen once per process, at the first use (a bad RADARGATE_CPU_KERNELS fails every use).
Level level() {
  static const Level l = choose();
  return l;
}

}  // namespace

std::unique_ptr<CpuLayerBase<float>> make_dispatched_cpu_layer(const LayerConfig& c, const Params<float>& p,
                                                               const CpuOptions& o) {
  switch (level()) {
#if defined(RADARGATE_DISPATCH_X86)
    case Level::avx512:
      return cpu_entry_avx512_float(c, p, o);
    case Level::avx2:
      return cpu_entry_avx2_float(c, p, o);
#endif
    default:
      return std::make_unique<CpuLayer<float>>(c, p, o);
  }
}

std::unique_ptr<CpuLayerBase<double>> make_dispatched_cpu_layer(const LayerConfig& c, const Params<double>& p,
                                                                const CpuOptions& o) {
  switch (level()) {
#if defined(RADARGATE_DISPATCH_X86)
    case Level::avx512:
      return cpu_entry_avx512_double(c, p, o);
    case Level::avx2:
      return cpu_entry_avx2_double(c, p, o);
#endif
    default:
      return std::make_unique<CpuLayer<double>>(c, p, o);
  }
}

}  // namespace detail

const char* cpu_kernel_set() {
  switch (detail::level()) {
#if defined(RADARGATE_DISPATCH_X86)
    case detail::Level::avx512:
      return detail::cpu_entry_avx512_kernels();
    case detail::Level::avx2:
      return detail::cpu_entry_avx2_kernels();
#endif
    default:
      return detail::simd::kernel_set<float>();
  }
}

}  // namespace radargate

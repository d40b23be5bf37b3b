// src/cpu_arch.cpp -- one instruction set's build of the cpu backend, for runtime dispatch.
//
// CMake compiles this file once per extra instruction set (on x86-64: AVX2+FMA and AVX-512) with
// that set's -m flags and RG_CPU_ENTRY naming its entry points. Everything of the backend that
// depends on the flags lives in radargate::detail::RG_CPU_NS (detail/cpu_arch.hpp), and Eigen is
// renamed for this file (-DEigen=...), so no template is compiled twice under one name with
// different instructions. What the file shares with the rest of the program (the standard
// library, xsimd's allocator, radargate's views) is linked after the baseline build, and the
// linker keeps the first definition it meets: the one compiled for the least capable set that
// uses it (docs/CPU_BACKEND.md, "Runtime dispatch").
#include "radargate/cpu.hpp"

#ifndef RG_CPU_ENTRY
#error "src/cpu_arch.cpp: compile with -DRG_CPU_ENTRY=<name> (see CMakeLists.txt)"
#endif
#define RG_CAT_(a, b) a##b
#define RG_CAT(a, b) RG_CAT_(a, b)

namespace radargate {
namespace detail {

std::unique_ptr<CpuLayerBase<float>> RG_CAT(RG_CPU_ENTRY, _float)(const LayerConfig& c, const Params<float>& p,
                                                                  const CpuOptions& o) {
  return std::make_unique<CpuLayer<float>>(c, p, o);
}
std::unique_ptr<CpuLayerBase<double>> RG_CAT(RG_CPU_ENTRY, _double)(const LayerConfig& c, const Params<double>& p,
                                                                    const CpuOptions& o) {
  return std::make_unique<CpuLayer<double>>(c, p, o);
}
const char* RG_CAT(RG_CPU_ENTRY, _kernels)() { return simd::kernel_set<float>(); }

}  // namespace detail
}  // namespace radargate

# radargate::cpu_dispatch -- runtime dispatch of the cpu backend (src/cpu_dispatch.cpp).
#
# A program that links it gets, from one build, the cpu backend's kernels for the CPU it runs on:
# on x86-64 the baseline build (SSE2, or whatever the program's own flags allow) plus an AVX2+FMA
# and an AVX-512 build of the same code, chosen once per process; elsewhere the baseline build
# alone. Its objects go on the program's link line in this order (baseline, AVX2, AVX-512), which
# docs/CPU_BACKEND.md ("Runtime dispatch") explains. A program that does not link it gets the
# header-only backend, compiled for its own -march, with no dispatch at all.
option(RADARGATE_CPU_DISPATCH "Build radargate::cpu_dispatch and use it in the tool, tests and benchmarks" ON)
if(NOT TARGET radargate_cpu OR NOT RADARGATE_CPU_DISPATCH)
  return()
endif()

set(_rg_x86 OFF)
if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64)$" AND CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
  set(_rg_x86 ON)
endif()

# An interface library whose sources are the objects, in order: a program that links it lists them
# after its own objects.
add_library(radargate_cpu_dispatch INTERFACE)
add_library(radargate::cpu_dispatch ALIAS radargate_cpu_dispatch)
target_link_libraries(radargate_cpu_dispatch INTERFACE radargate_cpu)
target_compile_definitions(radargate_cpu_dispatch INTERFACE RADARGATE_CPU_DISPATCH)
add_library(radargate_cpu_base OBJECT ${PROJECT_SOURCE_DIR}/src/cpu_dispatch.cpp)
target_link_libraries(radargate_cpu_base PRIVATE radargate_cpu)
target_compile_definitions(radargate_cpu_base PRIVATE RADARGATE_CPU_DISPATCH)
target_sources(radargate_cpu_dispatch INTERFACE $<TARGET_OBJECTS:radargate_cpu_base>)
add_dependencies(radargate_cpu_dispatch radargate_cpu_base)
if(_rg_x86)
  target_compile_definitions(radargate_cpu_base PRIVATE RADARGATE_DISPATCH_X86)
  # name: entry-point prefix; flags: the instruction set (every flag is checked at run time by
  # src/cpu_dispatch.cpp before the build is used)
  # (F16C: the f16 weight loads, detail/cpu_half.hpp; every AVX2 CPU has it)
  set(_rg_avx2_flags -mavx2 -mfma -mf16c)
  set(_rg_avx512_flags -mavx2 -mfma -mf16c -mavx512f -mavx512cd -mavx512bw -mavx512dq -mavx512vl)
  foreach(level avx2 avx512)
    set(obj radargate_cpu_arch_${level})
    add_library(${obj} OBJECT ${PROJECT_SOURCE_DIR}/src/cpu_arch.cpp)
    target_link_libraries(${obj} PRIVATE radargate_cpu)
    target_compile_definitions(${obj} PRIVATE RADARGATE_CPU_DISPATCH RG_CPU_ENTRY=cpu_entry_${level}
                                              Eigen=radargate_eigen_${level})
    target_compile_options(${obj} PRIVATE ${_rg_${level}_flags})
    # the objects of the more capable set after those of the less capable one (see above)
    target_sources(radargate_cpu_dispatch INTERFACE $<TARGET_OBJECTS:${obj}>)
    add_dependencies(radargate_cpu_dispatch ${obj})
  endforeach()
endif()

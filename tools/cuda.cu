// The tool's one CUDA translation unit: radargate bench --backend cuda (bench_cuda.cu) and radargate
// train --backend cuda (train_cuda.cu), included here so that nvcc compiles the backend's kernels,
// the slowest part of the build, once for the tool rather than once per file.
#include "bench_cuda.cu"
#include "train_cuda.cu"

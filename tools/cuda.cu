// The tool's one CUDA translation unit: radargate bench --backend cuda (bench_cuda.cu) and radargate
// train --backend cuda (train_cuda.cu). The CUDA backend's headers define kernels that are not
// templates (one definition each, with external linkage), so one program may compile them in one
// unit only; the tool's CUDA parts are therefore included here rather than compiled apart.
#include "bench_cuda.cu"
#include "train_cuda.cu"

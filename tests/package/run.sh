#!/usr/bin/env bash
# run.sh subdir|install|install-blas SOURCE_DIR WORK_DIR
# install-blas: radargate configured with -DRADARGATE_USE_BLAS=ON; the consumer's radargate::cpu
# must bring the BLAS with it and report the "blas" GEMM route.
set -euo pipefail
mode=$1 src=$2 work=$3
rm -rf "$work" && mkdir -p "$work"
consumer=$(cd "$(dirname "${BASH_SOURCE[0]}")/consumer" && pwd)
if [[ $mode == install || $mode == install-blas ]]; then
  blas=OFF route=eigen
  [[ $mode == install-blas ]] && blas=ON route=blas
  cmake -S "$src" -B "$work/radargate-build" -DRADARGATE_BUILD_TESTS=OFF -DRADARGATE_BUILD_TOOLS=OFF \
    -DRADARGATE_BUILD_BENCH=OFF -DRADARGATE_BUILD_EXAMPLES=OFF -DRADARGATE_ENABLE_CUDA=OFF \
    -DRADARGATE_USE_BLAS=$blas >/dev/null
  cmake --install "$work/radargate-build" --prefix "$work/prefix" >/dev/null
  test -f "$work/prefix/include/radargate.hpp"
  cmake -S "$consumer" -B "$work/consumer-build" -DMODE=install -DCMAKE_PREFIX_PATH="$work/prefix" \
    -DEXPECT_ROUTE=$route
else
  cmake -S "$consumer" -B "$work/consumer-build" -DMODE=subdir -DRADARGATE_SOURCE_DIR="$src"
fi
cmake --build "$work/consumer-build" -j 2
"$work/consumer-build/consumer"

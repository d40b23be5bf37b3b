// Deploying an imported model on a small board (docs/EDGE.md, "Worked example"): the program loads
// a model file of many layers (e.g. from `radargate import-peft`), builds a cpu-backend layer for
// each, runs one decode step (T = 1) on a fixed input and prints every output value, so that two
// machines can be compared line by line.
//
//   radargate_edge_board MODEL [--layer NAME] [--threads N]
//
// Output: one line "kernels NAME", then per layer one line
//   y NAME d y_0 y_1 ... y_{d-1}          (%.9g: float32 printed exactly)
// and a last line "heap ..." with the bytes the program holds on the heap (heap_meter.hpp): after
// loading the file and building the layers, and at most during the decode calls.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "heap_meter.hpp"
#include "radargate/cpu.hpp"
#include "radargate/io/model_set.hpp"

namespace io = radargate::io;
using radargate::index_t;

int main(int argc, char** argv) {
  std::string model, only;
  radargate::CpuOptions options;  // threads = 1: no thread is started
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--layer" && i + 1 < argc) {
      only = argv[++i];
    } else if (a == "--threads" && i + 1 < argc) {
      options.threads = std::atoi(argv[++i]);
    } else if (model.empty() && a[0] != '-') {
      model = a;
    } else {
      std::fprintf(stderr, "usage: %s MODEL [--layer NAME] [--threads N]\n", argv[0]);
      return 2;
    }
  }
  if (model.empty()) {
    std::fprintf(stderr, "usage: %s MODEL [--layer NAME] [--threads N]\n", argv[0]);
    return 2;
  }
  try {
    // The file's bytes are read once; float32 tensors are used in place, others converted.
    const io::ModelSet<float> set = io::ModelSet<float>::open(model);
    std::vector<const io::ModelLayer<float>*> chosen;
    if (!only.empty())
      chosen.push_back(&set.layer(only));
    else
      for (const io::ModelLayer<float>& l : set) chosen.push_back(&l);
    std::vector<std::unique_ptr<radargate::Layer<float, radargate::backend::cpu>>> layers;
    for (const io::ModelLayer<float>* l : chosen)
      layers.push_back(
          std::make_unique<radargate::Layer<float, radargate::backend::cpu>>(l->config, l->params, options));

    // One decode step per layer: a single token, x_j = sin(0.7 j + 0.3). The buffers are made
    // first, so that the heap peak below is the layers' own.
    std::vector<std::vector<float>> xs, ys;
    for (const io::ModelLayer<float>* l : chosen) {
      xs.emplace_back(std::size_t(l->dims.d_in));
      ys.emplace_back(std::size_t(l->dims.d));
      for (std::size_t j = 0; j < xs.back().size(); ++j) xs.back()[j] = float(std::sin(0.7 * double(j) + 0.3));
    }
    const std::size_t loaded = heap_meter::held();
    heap_meter::reset_peak();
    for (std::size_t i = 0; i < chosen.size(); ++i) {
      const radargate::Dims& D = chosen[i]->dims;
      layers[i]->forward(radargate::make_view(static_cast<const float*>(xs[i].data()), 1, D.d_in),
                         radargate::make_view(ys[i].data(), 1, D.d));
    }
    const std::size_t peak = heap_meter::peak();

    std::printf("kernels %s\n", layers.empty() ? radargate::cpu_kernel_set() : layers.front()->kernels());
    for (std::size_t i = 0; i < chosen.size(); ++i) {
      std::printf("y %s %zu", chosen[i]->name.c_str(), ys[i].size());
      for (float v : ys[i]) std::printf(" %.9g", double(v));
      std::printf("\n");
    }
    std::printf("heap %zu B after loading and building %zu layers; at most %zu B more during the decode calls\n",
                loaded, layers.size(), peak - loaded);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}

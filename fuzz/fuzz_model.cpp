// libFuzzer harness: a model file, from bytes to a validated model (the safetensors reader, the
// configuration in the metadata, names, dtypes, shapes and values: io::load_model), then one
// forward pass of the reference layer on a zero token when the model loads. The same bytes are
// then read as a file of many layers (io::ModelSet: the "radargate.layers" list and every layer),
// and each layer is run the same way.
#include "fuzz_common.hpp"
#include "radargate.hpp"
#include "radargate/io/model_file.hpp"
#include "radargate/io/model_set.hpp"

namespace {
void run_once(const radargate::LayerConfig& config, const radargate::Params<float>& params,
              const radargate::Dims& dims) {
  if (dims.d_in > 4096 || dims.d > 4096) return;
  const radargate::Layer<float, radargate::backend::reference> layer(config, params);
  auto x = radargate::make_tensor<float>({1, dims.d_in});
  auto y = radargate::make_tensor<float>({1, dims.d});
  (void)layer.forward(x.view<2>(), y.mutable_view<2>());
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::shared_ptr<const radargate::io::SafetensorsFile> file;
  fuzz::expect_errors_only([&] {
    file = std::make_shared<const radargate::io::SafetensorsFile>(
        radargate::io::SafetensorsFile::from_bytes(fuzz::bytes(data, size), "fuzz.safetensors"));
  });
  if (!file) return 0;
  fuzz::expect_errors_only([&] {
    const auto lm = radargate::io::load_model<float>(*file);
    run_once(lm.model.config, lm.model.params(), lm.dims);
  });
  fuzz::expect_errors_only([&] {
    const radargate::io::ModelSet<float> set(file);
    for (const auto& l : set) run_once(l.config, l.params, l.dims);
  });
  return 0;
}

// libFuzzer harness: a model file, from bytes to a validated model (the safetensors reader, the
// configuration in the metadata, names, dtypes, shapes and values: io::load_model), then one
// forward pass of the reference layer on a zero token when the model loads.
#include "fuzz_common.hpp"
#include "radargate.hpp"
#include "radargate/io/model_file.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::expect_errors_only([&] {
    const auto f = radargate::io::SafetensorsFile::from_bytes(fuzz::bytes(data, size), "fuzz.safetensors");
    const auto lm = radargate::io::load_model<float>(f);
    if (lm.dims.d_in > 4096 || lm.dims.d > 4096) return;
    const radargate::Layer<float, radargate::backend::reference> layer(lm.model.config, lm.model.params());
    auto x = radargate::make_tensor<float>({1, lm.dims.d_in});
    auto y = radargate::make_tensor<float>({1, lm.dims.d});
    (void)layer.forward(x.view<2>(), y.mutable_view<2>());
  });
  return 0;
}

// libFuzzer harness: the layer configuration parser (radargate::io::parse_config), the text of a
// model file's "radargate.config" metadata entry; an accepted configuration must round-trip.
#include "fuzz_common.hpp"
#include "radargate/io/model_file.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::expect_errors_only([&] {
    const std::string text(reinterpret_cast<const char*>(data), size);
    const radargate::LayerConfig c = radargate::io::parse_config(text);
    const radargate::LayerConfig back = radargate::io::parse_config(radargate::io::config_to_json(c).dump());
    if (radargate::io::config_to_json(back) != radargate::io::config_to_json(c)) std::abort();
  });
  return 0;
}

// libFuzzer harness: the safetensors reader (radargate::io::SafetensorsFile::from_bytes) and the
// conversion of every floating tensor it accepts.
#include "fuzz_common.hpp"
#include "radargate/io/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::expect_errors_only([&] {
    const auto f = radargate::io::SafetensorsFile::from_bytes(fuzz::bytes(data, size), "fuzz.safetensors");
    for (const radargate::io::TensorInfo& t : f.tensors()) {
      if (!radargate::io::is_floating(t.dtype)) continue;
      const auto v = f.get<double>(t.name);
      if (v.data.size() != std::size_t(t.numel())) std::abort();
    }
    for (const auto& kv : f.metadata()) (void)kv;
  });
  return 0;
}

// libFuzzer harness: an input (activation) file for a fixed model of d_in = 4, d = 3 in F32
// (io::load_activations with and without dy).
#include "fuzz_common.hpp"
#include "radargate/io/model_file.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  radargate::Dims D;
  D.d_in = 4;
  D.d = 3;
  D.N = 2;
  D.r = 1;
  fuzz::expect_errors_only([&] {
    const auto f = radargate::io::SafetensorsFile::from_bytes(fuzz::bytes(data, size), "fuzz.safetensors");
    for (bool with_dy : {false, true}) {
      fuzz::expect_errors_only([&] {
        const auto a = radargate::io::load_activations<float>(f, D, radargate::io::DType::F32, with_dy);
        if (a.x.shape.size() != 2 || a.x.shape[1] != 4) std::abort();
        if (with_dy && (a.dy.shape.size() != 2 || a.dy.shape[0] != a.x.shape[0] || a.dy.shape[1] != 3)) std::abort();
      });
    }
  });
  return 0;
}

// radargate/io/peft.hpp on the adapters PEFT wrote (tests/peft/fixtures): the imported layers
// give PEFT's own outputs, smaller ranks are zero-padded, and a sharded base equals the single file.
#include <catch2/catch.hpp>
#include <cmath>
#include <memory>
#include <string>

#include "radargate.hpp"
#include "radargate/io/peft.hpp"

using namespace radargate;
namespace io = radargate::io;

namespace {
// Set by tests/peft/CMakeLists.txt (__FILE__ may be relative under ccache).
std::string fixtures() { return RADARGATE_PEFT_FIXTURES; }
}  // namespace

TEST_CASE("peft import: two ranks with the base give PEFT's outputs", "[peft]") {
  const std::string fx = fixtures();
  std::vector<io::peft::Adapter> ads = {io::peft::read_adapter(fx + "/adapters/plain"),
                                        io::peft::read_adapter(fx + "/adapters/rank2")};
  REQUIRE(ads[0].modules.size() == 4);
  CHECK(ads[0].modules[0].scaling == 2.0);
  CHECK(ads[1].modules[0].scaling == 1.5);
  for (const char* base_dir : {"/llama", "/llama_sharded"}) {
    io::peft::BaseModel base = io::peft::BaseModel::open(fx + base_dir);
    io::peft::ImportOptions opt;
    io::peft::ImportResult res = io::peft::import_adapters(ads, &base, opt);
    REQUIRE(res.layers.size() == 4);
    const io::ModelSet<double> set(std::make_shared<const io::SafetensorsFile>(
        io::SafetensorsFile::from_bytes(res.writer.serialize(), "imported")));
    const io::SafetensorsFile exp = io::SafetensorsFile::read(fx + "/expected/two_ranks.safetensors");
    for (const io::ModelLayer<double>& l : set) {
      // the rank-2 expert is zero-padded to rank 4
      for (index_t q = 2; q < 4; ++q)
        for (index_t c = 0; c < l.dims.d_in; ++c) CHECK(l.params.lora_A(1, q, c) == 0.0);
      const Tensor<double> x = exp.get<double>("x." + l.name), want = exp.get<double>("y." + l.name);
      Tensor<double> y = make_tensor<double>({x.shape[0], l.dims.d});
      Layer<double> layer(l.config, l.params);
      layer.forward(x.view<2>(), y.mutable_view<2>());
      double err = 0, scale = 1;
      for (std::size_t e = 0; e < y.data.size(); ++e) {
        err = std::max(err, std::fabs(y.data[e] - want.data[e]));
        scale = std::max(scale, std::fabs(want.data[e]));
      }
      INFO(l.name << " from " << base_dir);
      CHECK(err <= 64 * 1.1920929e-7 * scale);
    }
  }
}

TEST_CASE("peft import: refusals name the adapter and the module", "[peft]") {
  const std::string fx = fixtures();
  auto msg = [&](const std::string& a) {
    try {
      (void)io::peft::read_adapter(fx + "/adapters/" + a);
    } catch (const radargate::error& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  CHECK(msg("dora").rfind("adapter '" + fx + "/adapters/dora': module 'model.layers.0.self_attn.q_proj': use_dora",
                          0) == 0);
  CHECK(msg("embedding")
            .rfind("adapter '" + fx + "/adapters/embedding': module 'model.embed_tokens': LoRA on an embedding", 0) ==
        0);
  CHECK(msg("conv").rfind("adapter '" + fx + "/adapters/conv': module 'conv': LoRA on a convolution", 0) == 0);
  CHECK(msg("missing").rfind("adapter '" + fx + "/adapters/missing': expected a directory", 0) == 0);
}

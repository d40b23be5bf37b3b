// libFuzzer harness: a PEFT adapter's adapter_config.json (radargate::io::peft, docs/PEFT.md):
// the checked JSON parse, every field's check, and the rank_pattern / alpha_pattern keys, which
// are regular expressions matched against each module name (io/pattern.hpp). The tensors are a
// fixed valid adapter of two modules, so every configuration the checks accept reaches the
// pattern matcher and the rank and scaling rules.
#include "fuzz_common.hpp"
#include "radargate/io/peft.hpp"

namespace {
std::vector<unsigned char> adapter_tensors() {
  using namespace radargate;
  io::SafetensorsWriter w;
  for (const char* m : {"model.layers.0.self_attn.q_proj", "model.layers.10.self_attn.v_proj"})
    for (const char* part : {"lora_A", "lora_B"}) {
      const std::vector<index_t> shape =
          std::string(part) == "lora_A" ? std::vector<index_t>{2, 3} : std::vector<index_t>{4, 2};
      const std::vector<float> v(std::size_t(shape[0] * shape[1]), 0.25f);
      w.add(std::string(io::peft::key_prefix) + m + "." + part + ".weight", v.data(), shape, io::DType::F32);
    }
  return w.serialize();
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const std::vector<unsigned char> tensors = adapter_tensors();
  fuzz::expect_errors_only([&] {
    const std::string text(reinterpret_cast<const char*>(data), size);
    const auto a = radargate::io::peft::detail::adapter_from(
        "fuzz", text, [&] { return radargate::io::SafetensorsFile::from_bytes(tensors, "adapter_model.safetensors"); });
    for (const auto& m : a.modules)
      if (!(m.r >= 1) || !(m.A.data.size() == std::size_t(m.r) * 3)) std::abort();
  });
  return 0;
}

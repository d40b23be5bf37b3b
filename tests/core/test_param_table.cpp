// The parameter table (param_table.hpp) against the structs it describes, and the version header.
#include <catch2/catch.hpp>

#include <set>
#include <string>

#include "support/testing.hpp"

using namespace radargate;

TEST_CASE("param table: one row per Params member, in order, with the member's rank", "[table]") {
  Params<float> p;
  int row = 0;
  for_each_param(p, [&](const char* name, const auto& v) {
    REQUIRE(row < param_count);
    CHECK(std::string(name) == param_table[row].name);
    CHECK(std::decay_t<decltype(v)>::rank == param_table[row].rank);
    ++row;
  });
  CHECK(row == param_count);
  std::set<std::string> names(param_names().begin(), param_names().end());
  CHECK(int(names.size()) == param_count);
}

TEST_CASE("param table: shapes and needs", "[table]") {
  Dims D;
  D.N = 3, D.r = 2, D.d_in = 5, D.d = 6, D.k = 4, D.P = 2;
  CHECK(param_shape("lora.A", D) == std::vector<index_t>{3, 2, 5});
  CHECK(param_shape("angle.U", D) == std::vector<index_t>{2, 4});
  CHECK(param_shape("base.W0", D) == std::vector<index_t>{6, 5});
  CHECK_THROWS_WITH(param_shape("lora.C", D), Catch::Contains("unknown parameter name 'lora.C'"));
  const LayerConfig rg = LayerConfig::make(Variant::radargate), sum = LayerConfig::make(Variant::sum);
  CHECK(param_need(rg, "map.M") == Need::required);
  CHECK(param_need(rg, "stretch.ws") == Need::optional);
  CHECK(param_need(sum, "map.M") == Need::unused);
  CHECK(param_need(sum, "stretch.bg") == Need::unused);
  CHECK(param_need(sum, "lora.B") == Need::required);
  // Every required or optional tensor of a random model has its table shape.
  for (Variant v : all_variants) {
    const auto m = random_model<double>(LayerConfig::make(v), D, 1);
    for (const auto& kv : m.tensors) CHECK(kv.second.shape == param_shape(kv.first, D));
    CHECK_NOTHROW(validate(m.config, m.params()));
  }
}

TEST_CASE("version: the string matches the macros", "[version]") {
  const std::string s = std::to_string(RADARGATE_VERSION_MAJOR) + "." + std::to_string(RADARGATE_VERSION_MINOR) + "." +
                        std::to_string(RADARGATE_VERSION_PATCH);
  CHECK(s == version_string);
  CHECK(RADARGATE_VERSION == RADARGATE_VERSION_MAJOR * 10000 + RADARGATE_VERSION_MINOR * 100 + RADARGATE_VERSION_PATCH);
}

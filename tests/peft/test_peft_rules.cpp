// PEFT 0.13.2's pattern rule (radargate/io/peft.hpp): the first rank_pattern / alpha_pattern key k
// with Python's re.match(rf".*\.{k}$", module), else the module's own name. The expected answers
// are what Python's re gives for the same strings.
#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "radargate/io/peft.hpp"

namespace peft = radargate::io::peft;

TEST_CASE("peft: pattern keys match as PEFT 0.13.2 matches them", "[peft]") {
  const std::string q0 = "model.layers.0.self_attn.q_proj", v0 = "model.layers.0.self_attn.v_proj",
                    v10 = "model.layers.10.self_attn.v_proj";
  auto key = [](std::vector<std::string> keys, const std::string& m) {
    return peft::detail::pattern_key(keys, m, "t");
  };
  CHECK(key({"q_proj"}, q0) == "q_proj");
  CHECK(key({"q_proj"}, v0) == v0);  // no match: the module itself
  CHECK(key({"layers.0.self_attn.v_proj"}, v0) == "layers.0.self_attn.v_proj");
  CHECK(key({"layers.0.self_attn.v_proj"}, v10) == v10);  // '.' is any character, but "0" != "1"
  CHECK(key({"layers.1.*v_proj"}, v10) == "layers.1.*v_proj");
  CHECK(key({q0}, q0) == q0);      // a full name needs the fallback
  CHECK(key({"proj"}, q0) == q0);  // a dot must precede the key
  CHECK(key({"_proj"}, q0) == q0);
  CHECK(key({"q_proj|v_proj"}, q0) == "q_proj|v_proj");  // .*\.q_proj | v_proj$ (anchored at 0)
  CHECK(key({"q_proj|v_proj"}, v0) == v0);               // Python: re.match fails too
  CHECK(key({"v_proj", "q_proj"}, q0) == "q_proj");      // first match in key order
  CHECK(key({"self_attn\\.[qk]_proj"}, q0) == "self_attn\\.[qk]_proj");
  CHECK(key({"layers\\.\\d+\\.self_attn\\.q_proj"}, q0) == "layers\\.\\d+\\.self_attn\\.q_proj");
  try {
    (void)key({"("}, q0);
    FAIL("no error");
  } catch (const radargate::error& e) {
    CHECK(std::string(e.what()).rfind("t: adapter_config.json: pattern key '(' is not a regular expression", 0) == 0);
  }
}

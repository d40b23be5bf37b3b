// The linear-time matcher of PEFT's pattern keys (radargate/io/pattern.hpp): the same answer as
// Python's re.match on random patterns and subjects (tests/peft/fixtures/pattern_cases.json,
// from scripts/python/make_pattern_cases.py), refusals with one clear message, and hostile
// patterns that make a backtracking matcher take exponential time or stack.
#include <catch2/catch.hpp>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "radargate/io/pattern.hpp"

using radargate::io::pattern::Limits;
using radargate::io::pattern::Regex;

TEST_CASE("pattern: the same answers as Python's re.match", "[peft][pattern]") {
  std::ifstream in(RADARGATE_PEFT_FIXTURES "/pattern_cases.json");
  REQUIRE(in);
  const nlohmann::json j = nlohmann::json::parse(in);
  const auto& cases = j.at("cases");
  REQUIRE(cases.size() > 600);
  for (const auto& c : cases) {
    const std::string p = c.at("pattern"), s = c.at("subject");
    INFO("pattern '" << p << "' subject '" << s << "'");
    CHECK(Regex(p).match_prefix(s) == c.at("match").get<bool>());
  }
}

namespace {
std::string refusal(const std::string& pattern, const Limits& limits = {}) {
  try {
    (void)Regex(pattern, limits);
  } catch (const radargate::error& e) {
    return e.what();
  }
  return "accepted";
}
}  // namespace

TEST_CASE("pattern: what Python refuses, or this matcher does not read, is one clear error", "[peft][pattern]") {
  CHECK(refusal("(") == "missing ')' at position 1");
  CHECK(refusal("a)") == "unbalanced ')' at position 1");
  CHECK(refusal("*a") == "nothing to repeat at position 0");
  CHECK(refusal("a**") == "multiple repeat at position 2");
  CHECK(refusal("[ab") == "unterminated character set at position 3");
  CHECK(refusal("[b-a]") == "bad character range at position 4");
  CHECK(refusal("a{3,2}") == "min repeat greater than max repeat at position 1");
  CHECK(refusal("(a)\\1").find("escape '\\1' that this matcher does not read") == 0);
  CHECK(refusal("\\bq").find("escape '\\b' that this matcher does not read") == 0);
  CHECK(refusal("(?=a)").find("group syntax '(?=' (lookaround, flags, ...) that this matcher does not read") == 0);
  CHECK(refusal("(?i)a").find("group syntax '(?i'") == 0);
  CHECK(refusal("a\\") == "bad escape (end of pattern) at position 2");
  // Bounded work: nesting, counts, program size.
  CHECK(refusal(std::string(40, '(') + std::string(40, ')')).find("groups nested deeper than 32 levels") == 0);
  CHECK(refusal(std::string(100000, '(')).find("groups nested deeper than 32 levels") == 0);
  CHECK(refusal("a{1001}").find("repetition count above 1000") == 0);
  CHECK(refusal("(a{1000}){1000}").find("the pattern compiles to more than 20000 steps") == 0);
  CHECK(refusal("a{1000}") == "accepted");
  // A '{' that starts no count is a literal, as in Python.
  CHECK(Regex("a{x}").match_prefix("a{x}"));
  CHECK(Regex("a{,2}b").match_prefix("aab"));
  CHECK_FALSE(Regex("a{,2}b").match_prefix("aaab"));
}

TEST_CASE("pattern: hostile patterns stay linear", "[peft][pattern]") {
  const std::string as(100000, 'a');
  CHECK_FALSE(Regex("(a*)*b").match_prefix(as));
  CHECK_FALSE(Regex("(a|aa)+$").match_prefix(as + "b"));
  CHECK(Regex("(a|aa)+$").match_prefix(as));
  CHECK_FALSE(Regex(".*\\.(?:x+x+)+y$").match_prefix("m." + std::string(100000, 'x')));
  CHECK(Regex("(?:(?:(?:a*)*)*)*$").match_prefix(as));
  CHECK(Regex("()*$").match_prefix(""));
  // '$' also matches before a final newline, and '.' does not match one (Python's defaults).
  CHECK(Regex("a$").match_prefix("a\n"));
  CHECK_FALSE(Regex("a.").match_prefix("a\n"));
}

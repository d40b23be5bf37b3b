// The cpu backend computes what the reference backend computes: y and every gradient, for every
// variant, in float and double, over random shapes (odd extents, N = 1, r = 1, shapes that are
// no multiple of the SIMD width or of the tile), both pairings, both bounds, several thread
// counts and tile sizes, overwrite and accumulate.
#include "cpu/cpu_test_util.hpp"

using namespace rgtest;

namespace {
constexpr index_t tiny_tiles = 1;  // rounded up to one SIMD width: many tiles per layer
}

TEMPLATE_TEST_CASE("cpu backend equals the reference on random shapes", "[cpu]", float, double) {
  for (Variant v : all_variants) {
    DYNAMIC_SECTION(to_string(v)) {
      for (std::uint64_t seed = 1; seed <= 6; ++seed) {
        const Case c = random_case(v, seed);
        check_against_reference<TestType>(c, 1, seed % 2 ? tiny_tiles : 0);
        check_against_reference<TestType>(c, 2, tiny_tiles);
        check_against_reference<TestType>(c, 3, 0);
      }
    }
  }
}

TEMPLATE_TEST_CASE("cpu backend edge shapes: N = 1, r = 1, k = 1, d_in = 1, odd d, P = floor(d/2)", "[cpu]", float,
                   double) {
  for (Variant v : all_variants) {
    DYNAMIC_SECTION(to_string(v)) {
      for (Pairing pr : {Pairing::adjacent, Pairing::half}) {
        Case c;
        c.cfg = LayerConfig::make(v);
        c.cfg.pairing = pr;
        c.cfg.topk = 1;
        c.D = Dims{1, 9, 1, 1, 1, 4};  // d_in, d, N, r, k, P
        c.T = 5;
        check_against_reference<TestType>(c, 1, 0);
        check_against_reference<TestType>(c, 2, tiny_tiles);
        c.D = Dims{3, 17, 4, 1, 2, 8};
        c.cfg.topk = 3;
        c.T = 11;
        check_against_reference<TestType>(c, 3, tiny_tiles);
        c.D = Dims{5, 3, 2, 3, 1, 1};  // d = 3: one plane and one pass-through coordinate
        c.cfg.topk = 1;
        check_against_reference<TestType>(c, 2, 0);
      }
    }
  }
}

TEMPLATE_TEST_CASE("cpu backend over several tiles and token blocks at a realistic width", "[cpu]", float, double) {
  for (Variant v : {Variant::radargate, Variant::rotation_only, Variant::topk, Variant::stretch_only}) {
    DYNAMIC_SECTION(to_string(v)) {
      Case c;
      c.cfg = LayerConfig::make(v);
      c.cfg.topk = 3;
      c.D = Dims{70, 203, 6, 4, 5, 77};  // d_in, d, N, r, k, P: nothing a multiple of 8
      c.T = 13;
      c.cfg.pairing = Pairing::half;
      check_against_reference<TestType>(c, 1, 0);
      check_against_reference<TestType>(c, 3, 24);
      c.cfg.pairing = Pairing::adjacent;
      c.D.P = 101;
      check_against_reference<TestType>(c, 2, 16);
    }
  }
}

TEMPLATE_TEST_CASE("cpu backend accumulates into gradient buffers", "[cpu]", float, double) {
  for (Variant v : all_variants) {
    DYNAMIC_SECTION(to_string(v)) {
      const Case c = random_case(v, 17);
      check_against_reference<TestType>(c, 2, tiny_tiles, all_grads, true);
    }
  }
}

TEMPLATE_TEST_CASE("cpu backend computes any subset of the gradients", "[cpu]", float, double) {
  // One gradient at a time: each backward path must work without the others being asked for.
  const char* names[] = {"x",          "lora.A",     "lora.B",     "lora.scale", "map.M",
                         "angle.Wx",   "angle.Wv",   "angle.Wc",   "angle.U",    "angle.bias",
                         "stretch.Wg", "stretch.bg", "stretch.ws", "base.W0",    "base.b0"};
  for (Variant v : all_variants) {
    DYNAMIC_SECTION(to_string(v)) {
      Case c = random_case(v, 29);
      c.T = 6;
      c.opt.optional_tensors = true;
      c.opt.base = true;
      for (const char* only : names) {
        const std::string keep = only;
        check_against_reference<TestType>(c, 2, tiny_tiles, [&](const std::string& n) { return n == keep; });
      }
      // and the frozen-experts case: everything but the LoRA weights
      check_against_reference<TestType>(c, 1, 0, [](const std::string& n) { return n.rfind("lora.", 0) != 0; });
    }
  }
}

TEMPLATE_TEST_CASE("cpu backend: the stretch gate with rotation under every normalisation", "[cpu]", float, double) {
  // softmax, sigmoid and identity take the one-pass path (running softmax over the experts),
  // topk_softmax the two-pass one. Softmax with tau = 0.01 makes the scaled logits differ by
  // hundreds, so a running sum without the running maximum would overflow, and puts nearly all
  // weight on one expert (dl then comes from a difference of nearly equal terms). The other
  // normalisations use tau = 0.5: their float gradients scale with 1 / tau, and the reference's
  // own float error at tau = 0.01 is already near the tolerance. Several token blocks and tiles.
  for (Normalize nz : {Normalize::softmax, Normalize::sigmoid, Normalize::identity, Normalize::topk_softmax}) {
    for (double tau : {1.0, nz == Normalize::softmax ? 0.01 : 0.5}) {
      DYNAMIC_SECTION(to_string(nz) << " tau=" << tau) {
        Case c;
        c.cfg = LayerConfig::make(Variant::radargate);
        c.cfg.normalize = nz;
        c.cfg.topk = 3;
        c.cfg.tau = tau;
        c.D = Dims{37, 150, 7, 3, 4, 61};  // d_in, d, N, r, k, P
        c.T = 11;
        c.seed = 5;
        check_against_reference<TestType>(c, 1, 0);
        check_against_reference<TestType>(c, 2, tiny_tiles);
        c.cfg.pairing = Pairing::half;
        c.D.N = 1;
        c.cfg.topk = 1;
        check_against_reference<TestType>(c, 3, 0);
      }
    }
  }
}

TEMPLATE_TEST_CASE("cpu backend: the one-pass stretch backward over several groups of tokens", "[cpu]", float, double) {
  // Backward works in groups of 32 tokens, each swept tile by tile (512 planes per tile for r = 2
  // in float, 256 in double, so P = 700 makes two or three rotation tiles and a pass-through
  // one); 70 tokens, and 150 over 2 threads (75 each), make several groups, a ragged last group
  // and a ragged last block.
  Case c;
  c.cfg = LayerConfig::make(Variant::radargate);
  c.D = Dims{9, 2048, 3, 2, 2, 700};  // d_in, d, N, r, k, P
  c.seed = 11;
  c.T = 70;
  check_against_reference<TestType>(c, 1, 0);
  c.T = 150;
  c.cfg.pairing = Pairing::half;
  check_against_reference<TestType>(c, 2, 0);
}

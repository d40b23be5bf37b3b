// radargate/param_table.hpp -- the one table of a layer's parameters.
//
// Every other place that needs to know the parameters -- the Params and Gradients structs' walks,
// the shape checks, the file reader and writer, the random initialisation, the tool -- derives it
// from this table, so adding a parameter is one row here plus its maths (CONTRIBUTING.md).
//
// A row is
//   X(member, "file.name", rank, (shape in dimensions), reader, init)
// with
//   member   the field of Params<T> and Gradients<T>;
//   name     the tensor's name in model files (docs/FORMAT.md), in file order;
//   shape    its extents in terms of the layer's dimensions N, r, d_in, d, k, P;
//   reader   which configurations read it (param_need in params.hpp turns it into required,
//            optional or unused);
//   init     the distribution random_model (model.hpp) draws it from.
#pragma once

namespace radargate {

/// A dimension of the layer (Dims in params.hpp holds their values).
enum class Dim : unsigned char { N, r, d_in, d, k, P };

/// Which configurations read a parameter.
enum class Reader : unsigned char {
  experts,            // every configuration; required (the LoRA experts)
  always,             // every configuration; optional
  learned_map,        // rotation with map "learned"; required
  rotation,           // rotation; required
  rotation_optional,  // rotation; optional
  logits,             // gates with logits (static, linear, stretch); optional
  gate_weights,       // gates linear and stretch; optional
  stretch,            // gate stretch; optional
};

/// How random_model draws a parameter: a normal with the given standard deviation, except
/// `around_one` (0.5 + 0.5 |n|, a positive scale).
enum class Init : unsigned char {
  inv_sqrt_d_in,  // 1 / sqrt(d_in)
  inv_sqrt_r,     // 1 / sqrt(r)
  inv_sqrt_d,     // 1 / sqrt(d)
  angle,          // angle_scale / sqrt(k)
  half,           // 0.5
  unit,           // 1
  around_one,     // 0.5 + 0.5 |n|
};

#define RADARGATE_PARAMETERS(X)                                                                   \
  X(lora_A, "lora.A", 3, (Dim::N, Dim::r, Dim::d_in), Reader::experts, Init::inv_sqrt_d_in)       \
  X(lora_B, "lora.B", 3, (Dim::N, Dim::d, Dim::r), Reader::experts, Init::inv_sqrt_r)             \
  X(lora_scale, "lora.scale", 1, (Dim::N), Reader::always, Init::around_one)                      \
  X(map_M, "map.M", 2, (Dim::N, Dim::N), Reader::learned_map, Init::unit)                         \
  X(angle_Wx, "angle.Wx", 2, (Dim::k, Dim::d_in), Reader::rotation_optional, Init::inv_sqrt_d_in) \
  X(angle_Wv, "angle.Wv", 2, (Dim::k, Dim::d), Reader::rotation_optional, Init::inv_sqrt_d)       \
  X(angle_Wc, "angle.Wc", 2, (Dim::k, Dim::d), Reader::rotation_optional, Init::inv_sqrt_d)       \
  X(angle_U, "angle.U", 2, (Dim::P, Dim::k), Reader::rotation, Init::angle)                       \
  X(angle_bias, "angle.bias", 2, (Dim::N, Dim::P), Reader::rotation_optional, Init::half)         \
  X(stretch_Wg, "stretch.Wg", 2, (Dim::N, Dim::d_in), Reader::gate_weights, Init::inv_sqrt_d_in)  \
  X(stretch_bg, "stretch.bg", 1, (Dim::N), Reader::logits, Init::unit)                            \
  X(stretch_ws, "stretch.ws", 1, (Dim::d), Reader::stretch, Init::inv_sqrt_d)                     \
  X(base_W0, "base.W0", 2, (Dim::d, Dim::d_in), Reader::always, Init::inv_sqrt_d_in)              \
  X(base_b0, "base.b0", 1, (Dim::d), Reader::always, Init::unit)

#define RADARGATE_UNPAREN_(...) __VA_ARGS__

/// One row of the table, as a value.
struct ParamInfo {
  const char* name;
  int rank;
  Dim shape[3];
  Reader reader;
  Init init;
};

#define RADARGATE_PARAM_INFO_(member, name, rank, shape, reader, init) \
  ParamInfo{name, rank, {RADARGATE_UNPAREN_ shape}, reader, init},
inline constexpr ParamInfo param_table[] = {RADARGATE_PARAMETERS(RADARGATE_PARAM_INFO_)};
#undef RADARGATE_PARAM_INFO_

inline constexpr int param_count = int(sizeof(param_table) / sizeof(param_table[0]));

}  // namespace radargate

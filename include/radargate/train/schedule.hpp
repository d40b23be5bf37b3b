// radargate/train/schedule.hpp -- learning rate per step: constant or cosine, each after an
// optional linear warm-up.
//
// For step s = 0, 1, ..., total - 1 (the step about to be taken), base rate lr, warm-up w:
//
//   s < w:           lr * (s + 1) / w
//   constant:        lr
//   cosine:          lr * (1 + cos(pi * (s - w) / (total - w))) / 2
//
// so the cosine schedule starts at lr right after the warm-up and approaches 0 at the last step.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

#include "../error.hpp"

namespace radargate {
namespace train {

enum class ScheduleKind { constant, cosine };

inline const char* to_string(ScheduleKind k) { return k == ScheduleKind::constant ? "constant" : "cosine"; }
inline ScheduleKind parse_schedule(const std::string& s) {
  if (s == "constant") return ScheduleKind::constant;
  if (s == "cosine") return ScheduleKind::cosine;
  detail::fail("schedule: expected constant | cosine, found '", s, "'");
}

struct Schedule {
  ScheduleKind kind = ScheduleKind::constant;
  double lr = 1e-3;
  std::int64_t warmup = 0;  // steps of linear warm-up
  std::int64_t total = 1;   // steps of the whole run (cosine)

  void validate() const {
    if (!(lr >= 0) || !std::isfinite(lr)) detail::fail("schedule: expected a finite learning rate >= 0, found ", lr);
    if (warmup < 0) detail::fail("schedule: expected warm-up steps >= 0, found ", warmup);
    if (total < 1) detail::fail("schedule: expected total steps >= 1, found ", total);
  }

  /// The learning rate of step s (0-based).
  double at(std::int64_t s) const {
    if (s < warmup) return lr * double(s + 1) / double(warmup);
    if (kind == ScheduleKind::constant) return lr;
    const std::int64_t span = total - warmup;
    if (span <= 0) return lr;
    const double pi = 3.14159265358979323846;
    const double progress = double(s - warmup) / double(span);
    return lr * 0.5 * (1.0 + std::cos(pi * (progress < 1.0 ? progress : 1.0)));
  }
};

}  // namespace train
}  // namespace radargate

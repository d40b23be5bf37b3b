// radargate/train.hpp -- training a layer: optimizers (AdamW, SGD), learning-rate schedules,
// losses with their gradients, and a trainer that steps any backend on any subset of the
// parameters (docs/TRAINING.md). Saving and loading a trainer's state needs radargate::io:
// include <radargate/train/state_io.hpp>.
#pragma once

#include "radargate/train/loss.hpp"
#include "radargate/train/optimizer.hpp"
#include "radargate/train/schedule.hpp"
#include "radargate/train/trainer.hpp"

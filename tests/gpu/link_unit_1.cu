// The first of two units that include the CUDA backend (link_unit.cuh).
#define RG_LINK_UNIT 1
#include "link_unit.cuh"

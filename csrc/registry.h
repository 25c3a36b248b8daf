// One registration function per C++ component of worldmodels._C.
#pragma once
#include <pybind11/pybind11.h>

namespace wm {
void register_bouncing_balls(pybind11::module_& m);
void register_gru(pybind11::module_& m);
void register_sampling(pybind11::module_& m);
void register_maze(pybind11::module_& m);
void register_onehot_linear(pybind11::module_& m);
}  // namespace wm

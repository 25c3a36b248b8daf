// Entry point of the extension worldmodels._C: each csrc/<part>.cpp provides a
// register_<part>(module) function that adds its bindings.
#include <pybind11/pybind11.h>

#include "registry.h"

#ifdef WM_HAVE_OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "worldmodels C++ extension: batched renderers and CPU hot paths.";
  m.def("has_openmp", []() {
#ifdef WM_HAVE_OPENMP
    return true;
#else
    return false;
#endif
  }, "Whether the extension was built with OpenMP.");
  m.def("max_threads", []() {
#ifdef WM_HAVE_OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
  }, "OpenMP's default thread count (1 without OpenMP).");
  wm::register_bouncing_balls(m);
  wm::register_gru(m);
  wm::register_sampling(m);
  wm::register_maze(m);
  wm::register_onehot_linear(m);
}

// Sampler fast paths on the CPU (bindings added by the sampling ops).
#include "registry.h"

namespace wm {
void register_sampling(pybind11::module_& m) { (void)m; }
}  // namespace wm

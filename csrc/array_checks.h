// Shape checks of NumPy arguments shared by the bindings: each failure is a Python
// ValueError that names the argument, the expected shape and the one given.
#pragma once

#include <pybind11/numpy.h>

#include <cstdint>
#include <string>
#include <vector>

namespace wm {

inline std::string shape_of(const pybind11::array& x) {
  std::string s = "[";
  for (pybind11::ssize_t k = 0; k < x.ndim(); ++k) s += (k ? ", " : "") + std::to_string(x.shape(k));
  return s + "]";
}

inline void require(bool ok, const std::string& message) {
  if (!ok) throw pybind11::value_error(message);
}

inline void check_shape(const pybind11::array& x, const std::string& name, const std::vector<int64_t>& shape) {
  bool ok = x.ndim() == static_cast<pybind11::ssize_t>(shape.size());
  std::string want = "[";
  for (size_t d = 0; d < shape.size(); ++d) {
    ok = ok && x.shape(d) == shape[d];
    want += (d ? ", " : "") + std::to_string(shape[d]);
  }
  require(ok, name + " must have shape " + want + "], got " + shape_of(x));
}

}  // namespace wm

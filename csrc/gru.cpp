// GRU scans on the CPU: fused per-step gate maths (forward and backward) for the
// classic and the block-diagonal (DreamerV3) cell.
//
// Python (worldmodels/ops/_gru_cpp.py) keeps the GEMMs in PyTorch and drives the
// time loop; per step it calls `step(t)` of one of the "stepper" objects below,
// which were built once per scan over NumPy views of the scan's buffers (so a step
// costs one call with one integer argument). Steppers hold references to their
// arrays, release the GIL in `step` and split the batch rows over OpenMP threads
// when a step has enough work.
//
// Buffer layouts (all C-contiguous; B batch, T steps, H = G * Hg hidden units):
//   classic forward : gi [B,T,3H] (normalised input projections), gh [B,3H] (this
//                     step's h W_hh^T + b_hh), h0 [B,H], states [B,T,H], saved
//                     gates [B,T,3H], ghn [B,T,H], LayerNorm: ln_w/ln_b [3H],
//                     xhat [B,T,3H], rstd [B,T] (size-0 arrays without LayerNorm)
//   classic backward: grad [B,T,H], carry [B,H], rec [B,H] (dgh_{t+1} W_hh),
//                     outputs dgi [B,T,3H], dgh [B,T,3H] (pre-LayerNorm),
//                     dgh_hat [B,T,3H] (post-LayerNorm, only with LayerNorm)
//   block forward   : xp [B,T,G*3Hg] (x W_x + b), p [G,B,3Hg] (h_g W_h[g]), saved
//                     gates [B,T,G*3Hg], cval [B,T,H], xhat [B,T,G*3Hg], rstd [B,T,G]
//   block backward  : grad [B,T,H], carry [B,H], rec [G,B,Hg], outputs
//                     dp [B,T,G*3Hg] (pre-LayerNorm), dp_hat (post, with LayerNorm)
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "gru_rows.h"
#include "array_checks.h"
#include "registry.h"

#ifdef WM_HAVE_OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

namespace wm {
namespace gru {
namespace {

constexpr int64_t kParallelWork = 1 << 16;  // elements per step worth a parallel region

template <typename S>
using Array = py::array_t<S, py::array::c_style>;

// Checks `a` has `shape` (or is empty when `optional` and the feature is off) and
// returns its data pointer (nullptr for an accepted empty array).
template <typename S>
S* checked(const Array<S>& a, const char* name, std::vector<int64_t> shape, bool present = true) {
  if (!present) return nullptr;
  check_shape(a, std::string("gru: ") + name, shape);
  if (!a.writeable()) throw py::value_error(std::string("gru: ") + name + " must be writeable");
  return const_cast<S*>(a.data());
}

// Runs body(i) for i in [0, n), over OpenMP threads when the step is large enough.
template <typename Body>
void parallel_rows(int64_t n, int64_t work, int threads, const Body& body) {
#ifdef WM_HAVE_OPENMP
  if (threads != 1 && work >= kParallelWork) {
    const int count = threads > 0 ? threads : omp_get_max_threads();
#pragma omp parallel for num_threads(count) schedule(static)
    for (int64_t i = 0; i < n; ++i) body(i);
    return;
  }
#endif
  (void)work;
  (void)threads;
  for (int64_t i = 0; i < n; ++i) body(i);
}

void check_step(int64_t t, int64_t T) {
  if (t < 0 || t >= T) throw py::index_error("gru: step " + std::to_string(t) + " out of range [0, " + std::to_string(T) + ")");
}

// ------------------------------------------------------------------ classic

template <typename S>
class ClassicForward {
 public:
  ClassicForward(py::list keep, Array<S> gi, Array<S> gh, Array<S> h0, Array<S> states, Array<S> gates,
                 Array<S> ghn, Array<S> ln_w, Array<S> ln_b, Array<S> xhat, Array<S> rstd, double eps, int threads)
      : keep_(keep), B_(h0.shape(0)), T_(states.ndim() == 3 ? states.shape(1) : 0), H_(h0.shape(1)),
        ln_(ln_w.size() > 0), eps_(static_cast<S>(eps)), threads_(threads) {
    const int64_t B = B_, T = T_, H = H_;
    gi_ = checked(gi, "gi", {B, T, 3 * H});
    gh_ = checked(gh, "gh", {B, 3 * H});
    h0_ = checked(h0, "h0", {B, H});
    states_ = checked(states, "states", {B, T, H});
    gates_ = checked(gates, "gates", {B, T, 3 * H});
    ghn_ = checked(ghn, "ghn", {B, T, H});
    ln_w_ = checked(ln_w, "ln_w", {3 * H}, ln_);
    ln_b_ = checked(ln_b, "ln_b", {3 * H}, ln_);
    xhat_ = checked(xhat, "xhat", {B, T, 3 * H}, ln_);
    rstd_ = checked(rstd, "rstd", {B, T}, ln_);
    scratch_.resize(ln_ ? B * 3 * H : 0);
  }

  void step(int64_t t) {
    check_step(t, T_);
    parallel_rows(B_, B_ * 3 * H_, threads_, [&](int64_t b) { row(b, t); });
  }

 private:
  void row(int64_t b, int64_t t) {
    const int64_t H = H_, bt = b * T_ + t;
    const S* hp = t > 0 ? states_ + (bt - 1) * H : h0_ + b * H;
    const S* gh = gh_ + b * 3 * H;
    if (ln_) {
      S* normed = scratch_.data() + b * 3 * H;
      rstd_[bt] = layer_norm_row(gh, 3 * H, eps_, ln_w_, ln_b_, xhat_ + bt * 3 * H, normed);
      gh = normed;
    }
    classic_gates_forward(gi_ + bt * 3 * H, gh, hp, H, states_ + bt * H, gates_ + bt * 3 * H, ghn_ + bt * H);
  }

  py::list keep_;
  int64_t B_, T_, H_;
  bool ln_;
  S eps_;
  int threads_;
  S *gi_, *gh_, *h0_, *states_, *gates_, *ghn_, *ln_w_, *ln_b_, *xhat_, *rstd_;
  std::vector<S> scratch_;
};

template <typename S>
class ClassicBackward {
 public:
  ClassicBackward(py::list keep, Array<S> grad, Array<S> h0, Array<S> states, Array<S> gates, Array<S> ghn,
                  Array<S> ln_w, Array<S> xhat, Array<S> rstd, Array<S> carry, Array<S> rec, Array<S> dgi,
                  Array<S> dgh, Array<S> dgh_hat, int threads)
      : keep_(keep), B_(h0.shape(0)), T_(states.ndim() == 3 ? states.shape(1) : 0), H_(h0.shape(1)),
        ln_(ln_w.size() > 0), threads_(threads) {
    const int64_t B = B_, T = T_, H = H_;
    grad_ = checked(grad, "grad", {B, T, H});
    h0_ = checked(h0, "h0", {B, H});
    states_ = checked(states, "states", {B, T, H});
    gates_ = checked(gates, "gates", {B, T, 3 * H});
    ghn_ = checked(ghn, "ghn", {B, T, H});
    ln_w_ = checked(ln_w, "ln_w", {3 * H}, ln_);
    xhat_ = checked(xhat, "xhat", {B, T, 3 * H}, ln_);
    rstd_ = checked(rstd, "rstd", {B, T}, ln_);
    carry_ = checked(carry, "carry", {B, H});
    rec_ = checked(rec, "rec", {B, H});
    dgi_ = checked(dgi, "dgi", {B, T, 3 * H});
    dgh_ = checked(dgh, "dgh", {B, T, 3 * H});
    dgh_hat_ = checked(dgh_hat, "dgh_hat", {B, T, 3 * H}, ln_);
    scratch_.resize(B * 3 * H);
  }

  void step(int64_t t) {
    check_step(t, T_);
    parallel_rows(B_, B_ * 3 * H_, threads_, [&](int64_t b) { row(b, t); });
  }

 private:
  void row(int64_t b, int64_t t) {
    const int64_t H = H_, bt = b * T_ + t;
    const S* hp = t > 0 ? states_ + (bt - 1) * H : h0_ + b * H;
    S* dh = scratch_.data() + b * 3 * H;
    const S *g = grad_ + bt * H, *c = carry_ + b * H, *r = rec_ + b * H;
    for (int64_t j = 0; j < H; ++j) dh[j] = g[j] + c[j] + r[j];
    S* dgh_hat = ln_ ? dgh_hat_ + bt * 3 * H : dgh_ + bt * 3 * H;
    classic_gates_backward(dh, gates_ + bt * 3 * H, ghn_ + bt * H, hp, H, carry_ + b * H, dgi_ + bt * 3 * H, dgh_hat);
    if (ln_) layer_norm_row_backward(dgh_hat, xhat_ + bt * 3 * H, ln_w_, rstd_[bt], 3 * H, dh, dgh_ + bt * 3 * H);
  }

  py::list keep_;
  int64_t B_, T_, H_;
  bool ln_;
  int threads_;
  S *grad_, *h0_, *states_, *gates_, *ghn_, *ln_w_, *xhat_, *rstd_, *carry_, *rec_, *dgi_, *dgh_, *dgh_hat_;
  std::vector<S> scratch_;
};

}  // namespace
}  // namespace gru
}  // namespace wm

#include "gru_block.h"

namespace wm {
namespace gru {
namespace {

template <typename S>
void bind_dtype(py::module_& m, const std::string& suffix) {
  using A = Array<S>;
  py::class_<ClassicForward<S>>(m, ("GruClassicForward" + suffix).c_str(),
                                "Per-step forward gates of the classic GRU scan (see csrc/gru.cpp).")
      .def(py::init<py::list, A, A, A, A, A, A, A, A, A, A, double, int>(), py::arg("keep"),
           py::arg("gi").noconvert(), py::arg("gh").noconvert(), py::arg("h0").noconvert(),
           py::arg("states").noconvert(), py::arg("gates").noconvert(), py::arg("ghn").noconvert(),
           py::arg("ln_w").noconvert(), py::arg("ln_b").noconvert(), py::arg("xhat").noconvert(),
           py::arg("rstd").noconvert(), py::arg("eps"), py::arg("threads"))
      .def("step", &ClassicForward<S>::step, py::arg("t"), py::call_guard<py::gil_scoped_release>());
  py::class_<ClassicBackward<S>>(m, ("GruClassicBackward" + suffix).c_str(),
                                 "Per-step backward gates of the classic GRU scan (see csrc/gru.cpp).")
      .def(py::init<py::list, A, A, A, A, A, A, A, A, A, A, A, A, A, int>(), py::arg("keep"),
           py::arg("grad").noconvert(), py::arg("h0").noconvert(), py::arg("states").noconvert(),
           py::arg("gates").noconvert(), py::arg("ghn").noconvert(), py::arg("ln_w").noconvert(),
           py::arg("xhat").noconvert(), py::arg("rstd").noconvert(), py::arg("carry").noconvert(),
           py::arg("rec").noconvert(), py::arg("dgi").noconvert(), py::arg("dgh").noconvert(),
           py::arg("dgh_hat").noconvert(), py::arg("threads"))
      .def("step", &ClassicBackward<S>::step, py::arg("t"), py::call_guard<py::gil_scoped_release>());
  bind_block<S>(m, suffix);
}

}  // namespace
}  // namespace gru

void register_gru(py::module_& m) {
  gru::bind_dtype<float>(m, "F32");
  gru::bind_dtype<double>(m, "F64");
}

}  // namespace wm

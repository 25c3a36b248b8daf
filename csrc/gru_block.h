// Steppers of the block-diagonal (DreamerV3) GRU scan; included by csrc/gru.cpp
// (which defines Array, checked, parallel_rows and check_step). Layouts are listed
// at the top of csrc/gru.cpp. Work is split over (batch row, group) pairs.
#pragma once

namespace wm {
namespace gru {
namespace {

template <typename S>
class BlockForward {
 public:
  BlockForward(py::list keep, Array<S> xp, Array<S> p, Array<S> h0, Array<S> states, Array<S> gates,
               Array<S> cval, Array<S> ln_w, Array<S> ln_b, Array<S> xhat, Array<S> rstd, double eps, int threads)
      : keep_(keep), B_(h0.shape(0)), T_(states.ndim() == 3 ? states.shape(1) : 0), G_(p.shape(0)),
        Hg_(p.ndim() == 3 ? p.shape(2) / 3 : 0), ln_(ln_w.size() > 0), eps_(static_cast<S>(eps)), threads_(threads) {
    const int64_t B = B_, T = T_, G = G_, Hg = Hg_;
    if (h0.shape(1) != G * Hg) throw py::value_error("gru: h0 must have G * Hg columns");
    xp_ = checked(xp, "xp", {B, T, G * 3 * Hg});
    p_ = checked(p, "p", {G, B, 3 * Hg});
    h0_ = checked(h0, "h0", {B, G * Hg});
    states_ = checked(states, "states", {B, T, G * Hg});
    gates_ = checked(gates, "gates", {B, T, G * 3 * Hg});
    cval_ = checked(cval, "cval", {B, T, G * Hg});
    ln_w_ = checked(ln_w, "ln_w", {G * 3 * Hg}, ln_);
    ln_b_ = checked(ln_b, "ln_b", {G * 3 * Hg}, ln_);
    xhat_ = checked(xhat, "xhat", {B, T, G * 3 * Hg}, ln_);
    rstd_ = checked(rstd, "rstd", {B, T, G}, ln_);
    scratch_.resize(B * G * 3 * Hg);
  }

  void step(int64_t t) {
    check_step(t, T_);
    parallel_rows(B_ * G_, B_ * G_ * 3 * Hg_, threads_, [&](int64_t i) { row(i / G_, i % G_, t); });
  }

 private:
  void row(int64_t b, int64_t g, int64_t t) {
    const int64_t Hg = Hg_, W = 3 * Hg, H = G_ * Hg, bt = b * T_ + t;
    const int64_t off = (bt * G_ + g) * W;  // this (row, step, group) in [B,T,G*3Hg]
    const S* hp = (t > 0 ? states_ + (bt - 1) * H : h0_ + b * H) + g * Hg;
    S* v = scratch_.data() + (b * G_ + g) * W;
    const S *pr = p_ + (g * B_ + b) * W, *xr = xp_ + off;
    for (int64_t k = 0; k < W; ++k) v[k] = pr[k] + xr[k];
    if (ln_) rstd_[bt * G_ + g] = layer_norm_row(v, W, eps_, ln_w_ + g * W, ln_b_ + g * W, xhat_ + off, v);
    block_gates_forward(v, hp, Hg, states_ + bt * H + g * Hg, gates_ + off, cval_ + bt * H + g * Hg);
  }

  py::list keep_;
  int64_t B_, T_, G_, Hg_;
  bool ln_;
  S eps_;
  int threads_;
  S *xp_, *p_, *h0_, *states_, *gates_, *cval_, *ln_w_, *ln_b_, *xhat_, *rstd_;
  std::vector<S> scratch_;
};

template <typename S>
class BlockBackward {
 public:
  BlockBackward(py::list keep, Array<S> grad, Array<S> h0, Array<S> states, Array<S> gates, Array<S> cval,
                Array<S> ln_w, Array<S> xhat, Array<S> rstd, Array<S> carry, Array<S> rec, Array<S> dp,
                Array<S> dp_hat, int threads)
      : keep_(keep), B_(h0.shape(0)), T_(states.ndim() == 3 ? states.shape(1) : 0), G_(rec.shape(0)),
        Hg_(rec.ndim() == 3 ? rec.shape(2) : 0), ln_(ln_w.size() > 0), threads_(threads) {
    const int64_t B = B_, T = T_, G = G_, Hg = Hg_;
    grad_ = checked(grad, "grad", {B, T, G * Hg});
    h0_ = checked(h0, "h0", {B, G * Hg});
    states_ = checked(states, "states", {B, T, G * Hg});
    gates_ = checked(gates, "gates", {B, T, G * 3 * Hg});
    cval_ = checked(cval, "cval", {B, T, G * Hg});
    ln_w_ = checked(ln_w, "ln_w", {G * 3 * Hg}, ln_);
    xhat_ = checked(xhat, "xhat", {B, T, G * 3 * Hg}, ln_);
    rstd_ = checked(rstd, "rstd", {B, T, G}, ln_);
    carry_ = checked(carry, "carry", {B, G * Hg});
    rec_ = checked(rec, "rec", {G, B, Hg});
    dp_ = checked(dp, "dp", {B, T, G * 3 * Hg});
    dp_hat_ = checked(dp_hat, "dp_hat", {B, T, G * 3 * Hg}, ln_);
    scratch_.resize(B * G * 3 * Hg);
  }

  void step(int64_t t) {
    check_step(t, T_);
    parallel_rows(B_ * G_, B_ * G_ * 3 * Hg_, threads_, [&](int64_t i) { row(i / G_, i % G_, t); });
  }

 private:
  void row(int64_t b, int64_t g, int64_t t) {
    const int64_t Hg = Hg_, W = 3 * Hg, H = G_ * Hg, bt = b * T_ + t;
    const int64_t off = (bt * G_ + g) * W, hoff = bt * H + g * Hg;
    const S* hp = (t > 0 ? states_ + (bt - 1) * H : h0_ + b * H) + g * Hg;
    S* dh = scratch_.data() + (b * G_ + g) * W;
    S* carry = carry_ + b * H + g * Hg;
    const S *gr = grad_ + hoff, *rr = rec_ + (g * B_ + b) * Hg;
    for (int64_t j = 0; j < Hg; ++j) dh[j] = gr[j] + carry[j] + rr[j];
    S* dv = ln_ ? dp_hat_ + off : dp_ + off;
    block_gates_backward(dh, gates_ + off, cval_ + hoff, hp, Hg, carry, dv);
    if (ln_) layer_norm_row_backward(dv, xhat_ + off, ln_w_ + g * W, rstd_[bt * G_ + g], W, dh, dp_ + off);
  }

  py::list keep_;
  int64_t B_, T_, G_, Hg_;
  bool ln_;
  int threads_;
  S *grad_, *h0_, *states_, *gates_, *cval_, *ln_w_, *xhat_, *rstd_, *carry_, *rec_, *dp_, *dp_hat_;
  std::vector<S> scratch_;
};

template <typename S>
void bind_block(py::module_& m, const std::string& suffix) {
  using A = Array<S>;
  py::class_<BlockForward<S>>(m, ("GruBlockForward" + suffix).c_str(),
                              "Per-step forward gates of the block-diagonal GRU scan (see csrc/gru.cpp).")
      .def(py::init<py::list, A, A, A, A, A, A, A, A, A, A, double, int>(), py::arg("keep"),
           py::arg("xp").noconvert(), py::arg("p").noconvert(), py::arg("h0").noconvert(),
           py::arg("states").noconvert(), py::arg("gates").noconvert(), py::arg("cval").noconvert(),
           py::arg("ln_w").noconvert(), py::arg("ln_b").noconvert(), py::arg("xhat").noconvert(),
           py::arg("rstd").noconvert(), py::arg("eps"), py::arg("threads"))
      .def("step", &BlockForward<S>::step, py::arg("t"), py::call_guard<py::gil_scoped_release>());
  py::class_<BlockBackward<S>>(m, ("GruBlockBackward" + suffix).c_str(),
                               "Per-step backward gates of the block-diagonal GRU scan (see csrc/gru.cpp).")
      .def(py::init<py::list, A, A, A, A, A, A, A, A, A, A, A, A, int>(), py::arg("keep"),
           py::arg("grad").noconvert(), py::arg("h0").noconvert(), py::arg("states").noconvert(),
           py::arg("gates").noconvert(), py::arg("cval").noconvert(), py::arg("ln_w").noconvert(),
           py::arg("xhat").noconvert(), py::arg("rstd").noconvert(), py::arg("carry").noconvert(),
           py::arg("rec").noconvert(), py::arg("dp").noconvert(), py::arg("dp_hat").noconvert(),
           py::arg("threads"))
      .def("step", &BlockBackward<S>::step, py::arg("t"), py::call_guard<py::gil_scoped_release>());
}

}  // namespace
}  // namespace gru
}  // namespace wm

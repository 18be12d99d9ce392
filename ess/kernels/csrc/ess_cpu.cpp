// The C++ CPU kernels of ess (float32): one call per step of the DARTS search cell (intra_fwd / intra_bwd),
// of the discrete DARTS cell (darts_fwd / darts_bwd) and of the ESS inter search DAG (inter_fwd / inter_bwd).
// The same equations, saved tensors and outputs as the Python kernels in ess/kernels/{intra,darts,inter}.py,
// which document them; built by ess/kernels/cpu.py (python -m ess.kernels build).
//
// Op columns everywhere (theta's last dim, the DARTS op codes): tanh, relu, sigmoid, identity. KERNEL_OPS
// below publishes that order; the loader refuses a module whose order differs from ess.kernels.KERNEL_OPS.

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <cmath>
#include <vector>
#include <optional>

using at::Tensor;
using Vec = at::vec::Vectorized<float>;
static constexpr int64_t VL = Vec::size();

static inline Vec ld(const float* p, int64_t n) { return n == VL ? Vec::loadu(p) : Vec::loadu(p, n); }
static inline void st(float* p, const Vec& v, int64_t n) { if (n == VL) v.store(p); else v.store(p, n); }
// sigmoid(x) = (1 + tanh(x / 2)) / 2 on the rational tanh: no exp, one division (abs error <= 2e-7)
static inline Vec tanh_r(Vec x);
static inline Vec sigm(const Vec& x) { const Vec h(0.5f); return at::vec::fmadd(h, tanh_r(x * h), h); }
static inline Vec pos01(const Vec& x) { return Vec::blendv(Vec(0.f), Vec(1.f), x > Vec(0.f)); }
// Rational tanh (Eigen's ptanh_float): |error| <= 3e-7 relative
static inline Vec tanh_r(Vec x) {
  const Vec c(7.90531110763549805f);
  x = at::vec::minimum(at::vec::maximum(x, c.neg()), c);
  const Vec x2 = x * x;
  Vec p = at::vec::fmadd(x2, Vec(-2.76076847742355e-16f), Vec(2.00018790482477e-13f));
  p = at::vec::fmadd(p, x2, Vec(-8.60467152213735e-11f));
  p = at::vec::fmadd(p, x2, Vec(5.12229709037114e-08f));
  p = at::vec::fmadd(p, x2, Vec(1.48572235717979e-05f));
  p = at::vec::fmadd(p, x2, Vec(6.37261928875436e-04f));
  p = at::vec::fmadd(p, x2, Vec(4.89352455891786e-03f));
  Vec q = at::vec::fmadd(x2, Vec(1.19825839466702e-06f), Vec(1.18534705686654e-04f));
  q = at::vec::fmadd(q, x2, Vec(2.26843463243900e-03f));
  q = at::vec::fmadd(q, x2, Vec(4.89352518554385e-03f));
  return x * p / q;
}
static inline int64_t grain(int64_t B, int64_t per_row) {  // rows per task: ~16k elements
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(per_row, 1));
}

// ------------------------------------------------------------------------------------------------
// Normalisation over the batch (affine-free batch norm): mode 0 none, 1 batch statistics, 2 running

static void norm_fwd(const float* u, int64_t B, int64_t d, int64_t mode, float eps, const float* rmean,
                     const float* rrstd, const float* mask, float* s, float* s_in, float* mean_out, float* var_out,
                     float* rstd_out) {
  const int64_t nb = (d + VL - 1) / VL;
  at::parallel_for(0, nb, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t cb = c0; cb < c1; ++cb) {
      const int64_t x = cb * VL, n = std::min(VL, d - x);
      Vec shift(0.f), scale(1.f);
      if (mode == 1) {
        Vec sum(0.f);
        for (int64_t b = 0; b < B; ++b) sum = sum + ld(u + b * d + x, n);
        const Vec mean = sum / Vec((float)B);
        Vec sq(0.f);
        for (int64_t b = 0; b < B; ++b) { const Vec c = ld(u + b * d + x, n) - mean; sq = at::vec::fmadd(c, c, sq); }
        const Vec var = sq / Vec((float)B);
        const Vec rstd = Vec(1.f) / (var + Vec(eps)).sqrt();
        st(mean_out + x, mean, n); st(var_out + x, var, n); st(rstd_out + x, rstd, n);
        shift = mean; scale = rstd;
      } else if (mode == 2) {
        shift = ld(rmean + x, n); scale = ld(rrstd + x, n);
      }
      for (int64_t b = 0; b < B; ++b) {
        const Vec v = mode == 0 ? ld(u + b * d + x, n) : (ld(u + b * d + x, n) - shift) * scale;
        st(s + b * d + x, v, n);
        if (mask) st(s_in + b * d + x, v * ld(mask + b * d + x, n), n);
      }
    }
  });
}

// du from the total gradient ds = acc + gacc * mask (+ g): written into du.
static void norm_bwd(const float* acc, const float* gacc, const float* mask, const float* g, const float* s,
                     const float* rstd, int64_t B, int64_t d, int64_t mode, float* du) {
  const int64_t nb = (d + VL - 1) / VL;
  at::parallel_for(0, nb, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t cb = c0; cb < c1; ++cb) {
      const int64_t x = cb * VL, n = std::min(VL, d - x);
      Vec m1(0.f), m2(0.f);
      for (int64_t b = 0; b < B; ++b) {
        const int64_t o = b * d + x;
        Vec ds = ld(acc + o, n);
        if (gacc) ds = mask ? at::vec::fmadd(ld(gacc + o, n), ld(mask + o, n), ds) : ds + ld(gacc + o, n);
        if (g) ds = ds + ld(g + o, n);
        st(du + o, ds, n);
        if (mode == 1) { m1 = m1 + ds; m2 = at::vec::fmadd(ds, ld(s + o, n), m2); }
      }
      if (mode == 0) continue;
      const Vec r = ld(rstd + x, n);
      if (mode == 2) { for (int64_t b = 0; b < B; ++b) st(du + b * d + x, ld(du + b * d + x, n) * r, n); continue; }
      m1 = m1 / Vec((float)B); m2 = m2 / Vec((float)B);
      for (int64_t b = 0; b < B; ++b) {
        const int64_t o = b * d + x;
        st(du + o, r * (ld(du + o, n) - m1 - ld(s + o, n) * m2), n);
      }
    }
  });
}

// ------------------------------------------------------------------------------------------------
// The DARTS search cell (ess/kernels/intra.py: intra_search_forward / _backward)

// Node 0 (shared with the discrete cell): u = h + c (t - h); factors [3, B, d]: du/dc0, du/dh0, du/dh (direct)
static void node0_rows(const float* CH0, const float* h, int64_t B, int64_t d, float* u, float* F) {
  at::parallel_for(0, B, grain(B, d), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t x = 0; x < d; x += VL) {
        const int64_t n = std::min(VL, d - x);
        const Vec c = sigm(ld(CH0 + b * 2 * d + x, n)), t = tanh_r(ld(CH0 + b * 2 * d + d + x, n));
        const Vec hv = ld(h + b * d + x, n), one(1.f);
        st(u + b * d + x, hv + c * (t - hv), n);
        if (F) {
          st(F + b * d + x, c * (one - c) * (t - hv), n);
          st(F + B * d + b * d + x, c * (one - t * t), n);
          st(F + 2 * B * d + b * d + x, one - c, n);
        }
      }
  });
}

// Mixed node over its i predecessors: u = sum_j P s + c (mix - P s); factors into F (stride fstride between
// the 3 factors, rows of predecessor j at j * B * d).
static void mixed_rows(const float* CH, const float* S, const float* th, int64_t i, int64_t B, int64_t d, float* u,
                       float* F, int64_t fstride) {
  at::parallel_for(0, B, grain(B, i * d), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      for (int64_t x = 0; x < d; x += VL) st(u + b * d + x, Vec(0.f), std::min(VL, d - x));
      for (int64_t j = 0; j < i; ++j) {
        const float t0 = th[4 * j], t1 = th[4 * j + 1], t2 = th[4 * j + 2], t3 = th[4 * j + 3];
        const Vec T0(t0), T1(t1), T2(t2), T3(t3), P(t0 + t1 + t2 + t3), one(1.f);
        const float* C = CH + (j * B + b) * 2 * d;
        const float* s = S + (j * B + b) * d;
        for (int64_t x = 0; x < d; x += VL) {
          const int64_t n = std::min(VL, d - x);
          const Vec c = sigm(ld(C + x, n)), H = ld(C + d + x, n);
          const Vec g = sigm(H), t = tanh_r(H);
          const Vec mix = T0 * t + T1 * at::vec::maximum(H, Vec(0.f)) + T2 * g + T3 * H;
          const Vec ps = P * ld(s + x, n);
          const Vec a = mix - ps;
          st(u + b * d + x, ld(u + b * d + x, n) + ps + c * a, n);
          if (F) {
            const int64_t o = (j * B + b) * d + x;
            st(F + o, c * (one - c) * a, n);
            st(F + fstride + o, c * (T0 * (one - t * t) + T1 * pos01(H) + T2 * g * (one - g) + T3), n);
            st(F + 2 * fstride + o, P * (one - c), n);
          }
        }
      }
    }
  });
}

// Backward rows of a mixed node: dCH = [du F0, du F1], acc[j] += du F2; F recomputed when absent (then
// dtheta, if asked, is accumulated too: sum du (c f_k + (1 - c) s)).
static void mixed_rows_bwd(const float* du, const float* CH, const float* S, const float* th, const float* F,
                           int64_t fstride, int64_t i, int64_t B, int64_t d, float* dCH, float* acc, double* dtheta) {
  const int nt = at::get_num_threads();
  std::vector<double> part(dtheta ? (size_t)nt * i * 4 : 0, 0.0);
  at::parallel_for(0, B, grain(B, i * d), [&](int64_t b0, int64_t b1) {
    double* mine = dtheta ? part.data() + (size_t)at::get_thread_num() * i * 4 : nullptr;
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t j = 0; j < i; ++j) {
        const float t0 = th[4 * j], t1 = th[4 * j + 1], t2 = th[4 * j + 2], t3 = th[4 * j + 3];
        const Vec T0(t0), T1(t1), T2(t2), T3(t3), P(t0 + t1 + t2 + t3), one(1.f);
        Vec a0(0.f), a1(0.f), a2(0.f), a3(0.f), a4(0.f);
        for (int64_t x = 0; x < d; x += VL) {
          const int64_t n = std::min(VL, d - x);
          const int64_t o = (j * B + b) * d + x;
          const Vec g_u = ld(du + b * d + x, n);
          Vec f0, f1, f2;
          if (F) {
            f0 = ld(F + o, n); f1 = ld(F + fstride + o, n); f2 = ld(F + 2 * fstride + o, n);
          } else {
            const float* C = CH + (j * B + b) * 2 * d;
            const Vec c = sigm(ld(C + x, n)), H = ld(C + d + x, n);
            const Vec g = sigm(H), t = tanh_r(H), r = at::vec::maximum(H, Vec(0.f));
            const Vec sv = ld(S + o, n);
            const Vec mix = T0 * t + T1 * r + T2 * g + T3 * H;
            const Vec ps = P * sv;
            f0 = c * (one - c) * (mix - ps);
            f1 = c * (T0 * (one - t * t) + T1 * pos01(H) + T2 * g * (one - g) + T3);
            f2 = P * (one - c);
            if (mine) {
              const Vec dm = g_u * c;
              a0 = at::vec::fmadd(dm, t, a0); a1 = at::vec::fmadd(dm, r, a1); a2 = at::vec::fmadd(dm, g, a2);
              a3 = at::vec::fmadd(dm, H, a3); a4 = at::vec::fmadd(g_u * (one - c), sv, a4);
            }
          }
          float* dC = dCH + (j * B + b) * 2 * d;
          st(dC + x, g_u * f0, n);
          st(dC + d + x, g_u * f1, n);
          st(acc + o, at::vec::fmadd(g_u, f2, ld(acc + o, n)), n);
        }
        if (mine) {
          auto hsum = [](const Vec& v) {
            float tmp[VL];
            v.store(tmp);
            double sum = 0;
            for (int64_t k = 0; k < VL; ++k) sum += tmp[k];
            return sum;
          };
          const double base = hsum(a4);
          mine[4 * j] += hsum(a0) + base; mine[4 * j + 1] += hsum(a1) + base;
          mine[4 * j + 2] += hsum(a2) + base; mine[4 * j + 3] += hsum(a3) + base;
        }
      }
  });
  if (dtheta)
    for (int t = 0; t < nt; ++t)
      for (int64_t k = 0; k < i * 4; ++k) dtheta[k] += part[(size_t)t * i * 4 + k];
}

static const float* ptr(const std::optional<Tensor>& t) { return t && t->defined() ? t->data_ptr<float>() : nullptr; }

std::vector<Tensor> intra_fwd(const Tensor& xp, const Tensor& h, const std::optional<Tensor>& mask, const Tensor& W0h,
                              const Tensor& theta, const std::vector<Tensor>& Ws, int64_t mode, double eps,
                              const std::optional<Tensor>& rmean, const std::optional<Tensor>& rrstd, bool factors) {
  const int64_t B = h.size(0), d = h.size(1), n = Ws.size(), E = n * (n + 1) / 2;
  const auto opts = h.options();
  const float* m = ptr(mask);
  Tensor h_in = m ? h * *mask : h;
  Tensor CH0 = at::addmm(xp, h_in, W0h);
  Tensor S = at::empty({n + 1, B, d}, opts);
  Tensor S_in = m ? at::empty({n + 1, B, d}, opts) : S;
  Tensor stats = at::empty({3, n + 1, d}, opts);
  Tensor CH = at::empty({E, B, 2 * d}, opts);
  Tensor F0 = factors ? at::empty({3, B, d}, opts) : Tensor();
  Tensor F = factors ? at::empty({3, E, B, d}, opts) : Tensor();
  Tensor u = at::empty({B, d}, opts);
  Tensor thc = theta.contiguous();
  float* st0 = stats.data_ptr<float>();
  auto norm = [&](int64_t i) {
    norm_fwd(u.data_ptr<float>(), B, d, mode, (float)eps, ptr(rmean), ptr(rrstd), m, S[i].data_ptr<float>(),
             S_in[i].data_ptr<float>(), st0 + i * d, st0 + (n + 1) * d + i * d, st0 + 2 * (n + 1) * d + i * d);
  };
  node0_rows(CH0.data_ptr<float>(), h.data_ptr<float>(), B, d, u.data_ptr<float>(),
             factors ? F0.data_ptr<float>() : nullptr);
  norm(0);
  for (int64_t i = 1; i <= n; ++i) {
    const int64_t off = i * (i - 1) / 2;
    Tensor CHi = CH.narrow(0, off, i);
    Tensor CH2 = CHi.view({i * B, 2 * d});
    at::mm_out(CH2, S_in.narrow(0, 0, i).view({i * B, d}), Ws[i - 1]);
    mixed_rows(CHi.data_ptr<float>(), S.data_ptr<float>(), thc.data_ptr<float>() + 4 * off, i, B, d,
               u.data_ptr<float>(), factors ? F.data_ptr<float>() + off * B * d : nullptr, E * B * d);
    norm(i);
  }
  Tensor out = S.narrow(0, 1, n).mean(0);
  return {out, CH0, CH, F0, F, S, S_in, mode == 1 ? stats : Tensor()};
}

std::vector<Tensor> intra_bwd(const Tensor& dout, const Tensor& h, const std::optional<Tensor>& mask, const Tensor& W0h,
                              const Tensor& theta, const std::vector<Tensor>& Ws, const std::optional<Tensor>& CH0,
                              const std::optional<Tensor>& CH, const std::optional<Tensor>& F0,
                              const std::optional<Tensor>& F, const Tensor& S, const std::optional<Tensor>& S_in,
                              const std::optional<Tensor>& rstd, int64_t mode, bool need_w, bool need_theta) {
  const int64_t B = h.size(0), d = h.size(1), n = Ws.size(), E = n * (n + 1) / 2;
  const auto opts = h.options();
  const float* m = ptr(mask);
  const bool fac = F && F->defined();
  Tensor acc = at::zeros({n + 1, B, d}, opts);
  Tensor gacc = m ? at::zeros({n + 1, B, d}, opts) : acc;  // matmul parts, masked when read
  Tensor g = dout / (double)n;
  Tensor du = at::empty({B, d}, opts);
  Tensor dCH = at::empty({E, B, 2 * d}, opts);
  Tensor dth = at::zeros({E, 4}, opts.dtype(at::kDouble));
  Tensor thc = theta.contiguous();
  std::vector<Tensor> dWs(n);
  const float* r = ptr(rstd);
  auto rstd_of = [&](int64_t i) { return mode == 1 ? r + i * d : r; };
  for (int64_t i = n; i >= 1; --i) {
    const int64_t off = i * (i - 1) / 2;
    norm_bwd(acc[i].data_ptr<float>(), m ? gacc[i].data_ptr<float>() : nullptr, m, g.data_ptr<float>(),
             S[i].data_ptr<float>(), rstd_of(i), B, d, mode, du.data_ptr<float>());
    Tensor dCHi = dCH.narrow(0, off, i);
    mixed_rows_bwd(du.data_ptr<float>(), fac ? nullptr : CH->narrow(0, off, i).data_ptr<float>(),
                   S.data_ptr<float>(), thc.data_ptr<float>() + 4 * off,
                   fac ? F->data_ptr<float>() + off * B * d : nullptr, E * B * d, i, B, d, dCHi.data_ptr<float>(),
                   acc.data_ptr<float>(), need_theta ? dth.data_ptr<double>() + 4 * off : nullptr);
    Tensor dCH2 = dCHi.view({i * B, 2 * d});
    gacc.narrow(0, 0, i).view({i * B, d}).addmm_(dCH2, Ws[i - 1].t());
    if (need_w) dWs[i - 1] = at::mm(S_in->narrow(0, 0, i).view({i * B, d}).t(), dCH2);
  }
  norm_bwd(acc[0].data_ptr<float>(), m ? gacc[0].data_ptr<float>() : nullptr, m, nullptr, S[0].data_ptr<float>(),
           rstd_of(0), B, d, mode, du.data_ptr<float>());
  Tensor f0 = fac ? *F0 : at::empty({3, B, d}, opts);
  if (!fac) {
    Tensor tmp = at::empty({B, d}, opts);
    node0_rows(CH0->data_ptr<float>(), h.data_ptr<float>(), B, d, tmp.data_ptr<float>(), f0.data_ptr<float>());
  }
  Tensor dCH0 = at::cat({du * f0[0], du * f0[1]}, 1);
  Tensor dh = du * f0[2];
  Tensor G0 = at::mm(dCH0, W0h.t());
  if (m) dh.addcmul_(G0, *mask); else dh.add_(G0);
  Tensor dW0h = need_w ? at::mm((m ? h * *mask : h).t(), dCH0) : Tensor();
  std::vector<Tensor> out = {dCH0, dh, dW0h, need_theta ? dth.to(h.scalar_type()) : Tensor()};
  for (auto& w : dWs) out.push_back(w);
  return out;
}

// ------------------------------------------------------------------------------------------------
// The discrete DARTS cell (ess/kernels/darts.py). op codes: 0 tanh, 1 relu, 2 sigmoid, 3 identity

static inline void act(int64_t op, const Vec& H, Vec& f, Vec& fp) {
  const Vec one(1.f);
  switch (op) {
    case 0: { f = tanh_r(H); fp = one - f * f; break; }
    case 1: { f = at::vec::maximum(H, Vec(0.f)); fp = pos01(H); break; }
    case 2: { f = sigm(H); fp = f * (one - f); break; }
    default: { f = H; fp = one; }
  }
}

// s_i = s_p + c (f(h) - s_p); C/H rows at stride ld_ch; factors [3, B, d] at F (stride B*d)
static void darts_rows(const float* CH, int64_t ldch, const float* sp, int64_t op, int64_t B, int64_t d, float* s,
                       float* F) {
  at::parallel_for(0, B, grain(B, d), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t x = 0; x < d; x += VL) {
        const int64_t n = std::min(VL, d - x);
        const Vec c = sigm(ld(CH + b * ldch + x, n)), H = ld(CH + b * ldch + d + x, n), p = ld(sp + b * d + x, n);
        Vec f, fp;
        act(op, H, f, fp);
        st(s + b * d + x, p + c * (f - p), n);
        if (F) {
          const Vec one(1.f);
          st(F + b * d + x, c * (one - c) * (f - p), n);
          st(F + B * d + b * d + x, c * fp, n);
          st(F + 2 * B * d + b * d + x, one - c, n);
        }
      }
  });
}

// dCH (row stride ldch) = [du F0, du F1]; acc_p += du F2
static void darts_rows_bwd(const float* du, const float* F, int64_t B, int64_t d, float* dCH, int64_t ldch,
                           float* accp) {
  at::parallel_for(0, B, grain(B, d), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t x = 0; x < d; x += VL) {
        const int64_t n = std::min(VL, d - x), o = b * d + x;
        const Vec g = ld(du + o, n);
        st(dCH + b * ldch + x, g * ld(F + o, n), n);
        st(dCH + b * ldch + d + x, g * ld(F + B * d + o, n), n);
        st(accp + o, at::vec::fmadd(g, ld(F + 2 * B * d + o, n), ld(accp + o, n)), n);
      }
  });
}

// groups: per group k its source node and its nodes; node i's (group, position) in where_g / where_p.
std::vector<Tensor> darts_fwd(const Tensor& xp, const Tensor& h, const std::optional<Tensor>& mask, const Tensor& W0h,
                              const std::vector<Tensor>& Wg, const std::vector<int64_t>& ops,
                              const std::vector<int64_t>& preds, const std::vector<int64_t>& group_src,
                              const std::vector<int64_t>& where_g, const std::vector<int64_t>& where_p,
                              const std::vector<int64_t>& concat, bool factors) {
  const int64_t B = h.size(0), d = h.size(1), n = ops.size(), ng = group_src.size();
  const auto opts = h.options();
  const float* m = ptr(mask);
  Tensor CH0 = at::addmm(xp, m ? h * *mask : h, W0h);
  Tensor S = at::empty({n + 1, B, d}, opts);
  Tensor S_in = at::empty({ng, B, d}, opts);
  Tensor F = factors ? at::empty({n + 1, 3, B, d}, opts) : Tensor();
  std::vector<Tensor> CHg(ng);
  std::vector<std::vector<int64_t>> groups_of(n + 1);  // the groups fed by each node (a source may feed several)
  for (int64_t k = 0; k < ng; ++k) groups_of[group_src[k]].push_back(k);
  node0_rows(CH0.data_ptr<float>(), h.data_ptr<float>(), B, d, S[0].data_ptr<float>(),
             factors ? F[0].data_ptr<float>() : nullptr);
  for (int64_t j = 0; j <= n; ++j) {
    if (j > 0) {
      const int64_t k = where_g[j], p = where_p[j];
      const int64_t ldch = CHg[k].size(1);
      darts_rows(CHg[k].data_ptr<float>() + p * 2 * d, ldch, S[preds[j - 1]].data_ptr<float>(), ops[j - 1], B, d,
                 S[j].data_ptr<float>(), factors ? F[j].data_ptr<float>() : nullptr);
    }
    for (const int64_t k : groups_of[j]) {
      Tensor si = S_in[k];
      if (m) at::mul_out(si, S[j], *mask); else si.copy_(S[j]);  // (si: a view, bound to an lvalue)
      CHg[k] = at::mm(si, Wg[k]);
    }
  }
  Tensor out = S[concat[0]].clone();
  for (size_t c = 1; c < concat.size(); ++c) out.add_(S[concat[c]]);
  out.div_((double)concat.size());
  std::vector<Tensor> res = {out, CH0, S, S_in, F};
  for (auto& t : CHg) res.push_back(t);
  return res;
}

std::vector<Tensor> darts_bwd(const Tensor& dout, const Tensor& h, const std::optional<Tensor>& mask,
                              const Tensor& W0h, const std::vector<Tensor>& Wg, const std::vector<Tensor>& CHg,
                              const Tensor& S_in, const Tensor& F, const std::vector<int64_t>& preds,
                              const std::vector<int64_t>& group_src, const std::vector<int64_t>& where_g,
                              const std::vector<int64_t>& where_p, const std::vector<int64_t>& concat, bool need_w,
                              bool keep_dch) {
  const int64_t B = h.size(0), d = h.size(1), n = preds.size(), ng = group_src.size();
  const auto opts = h.options();
  const float* m = ptr(mask);
  Tensor acc = at::zeros({n + 1, B, d}, opts);
  Tensor g = dout / (double)concat.size();
  for (auto i : concat) acc[i].add_(g);
  std::vector<Tensor> dCHg(ng), dWg(ng);
  for (int64_t k = 0; k < ng; ++k) dCHg[k] = at::empty_like(CHg[k]);
  std::vector<std::vector<int64_t>> groups_of(n + 1);
  for (int64_t k = 0; k < ng; ++k) groups_of[group_src[k]].push_back(k);
  for (int64_t j = n; j >= 0; --j) {
    for (const int64_t k : groups_of[j]) {  // every consumer of s_j is done: back through W_g
      Tensor G = at::mm(dCHg[k], Wg[k].t());
      if (m) acc[j].addcmul_(G, *mask); else acc[j].add_(G);
      if (need_w) dWg[k] = at::mm(S_in[k].t(), dCHg[k]);
    }
    if (j == 0) break;
    const int64_t kk = where_g[j], p = where_p[j];
    darts_rows_bwd(acc[j].data_ptr<float>(), F[j].data_ptr<float>(), B, d, dCHg[kk].data_ptr<float>() + p * 2 * d,
                   dCHg[kk].size(1), acc[preds[j - 1]].data_ptr<float>());
  }
  Tensor du = acc[0];
  Tensor F0 = F[0];
  Tensor dCH0 = at::cat({du * F0[0], du * F0[1]}, 1);
  Tensor dh = du * F0[2];
  Tensor G0 = at::mm(dCH0, W0h.t());
  if (m) dh.addcmul_(G0, *mask); else dh.add_(G0);
  Tensor dW0h = need_w ? at::mm((m ? h * *mask : h).t(), dCH0) : Tensor();
  std::vector<Tensor> out = {dCH0, dh, dW0h};
  for (auto& w : dWg) out.push_back(w);
  if (keep_dch)  // the caller multiplies the weight gradients out over a whole sequence
    for (auto& t : dCHg) out.push_back(t);
  return out;
}
// ------------------------------------------------------------------------------------------------
// The ESS inter search cell (ess/kernels/inter.py: inter_search_forward / _backward). Layouts: X [m, N, d];
// P [2, m, N, d] the inputs' projections; AB [K, 2, N, d] the branches (a, b) of node k; Pn [K-1, 2, N, d]
// node k's projections; NODES [K, N, d]. theta_in [2, K, m, 4]; theta_nodes[k-1] [2, k, 4]. Op order in
// the last dim of every theta: tanh, relu, sigmoid, identity. comb: (product, sum) weights, code 2.

static constexpr int64_t MAX_NODES = 16;

static inline Vec relu_v(const Vec& p) { return at::vec::maximum(p, Vec(0.f)); }
static inline Vec mix4(const float* th, const Vec& t, const Vec& r, const Vec& g, const Vec& p, const Vec& acc) {
  return at::vec::fmadd(Vec(th[0]), t, at::vec::fmadd(Vec(th[1]), r, at::vec::fmadd(Vec(th[2]), g,
                        at::vec::fmadd(Vec(th[3]), p, acc))));
}
static inline Vec slope4(const Vec& p, const Vec& d0, const Vec& d1, const Vec& d2, const Vec& d3) {
  const Vec one(1.f), t = tanh_r(p), g = sigm(p);
  return d0 * (one - t * t) + d1 * pos01(p) + d2 * g * (one - g) + d3;
}
static inline Vec combine(int64_t code, const float* cw, const Vec& a, const Vec& b) {
  if (code == 0) return a * b;
  if (code == 1) return a + b;
  return Vec(cw[0]) * (a * b) + Vec(cw[1]) * (a + b);
}
static double hsum(const Vec& v) {
  float tmp[VL];
  v.store(tmp);
  double sum = 0;
  for (int64_t k = 0; k < VL; ++k) sum += tmp[k];
  return sum;
}

struct InterShape {
  int64_t m, K, N, d, code;
  bool residual;
  const float* cw;
  int64_t Nd() const { return N * d; }
};

// out = mean_k NODES[k] (+ X[0]) for the rows' element o (node K-1's value given: not yet in memory)
static inline void inter_out(const InterShape& S, const float* NODES, const Vec& last, const float* X0, float* out,
                             int64_t o, int64_t n) {
  Vec sum = last;
  for (int64_t k = 0; k + 1 < S.K; ++k) sum = sum + ld(NODES + k * S.Nd() + o, n);
  sum = sum / Vec((float)S.K);
  if (S.residual) sum = sum + ld(X0 + o, n);
  st(out + o, sum, n);
}

// Level 0: every node's input part, a_k / b_k = sum_j sum_op theta_in op(P[side, j]), and node 0.
static void inter_fwd_level0(const InterShape& S, const float* P, const float* thi, float* AB, float* NODES,
                             const float* X0, float* out) {
  const int64_t m = S.m, K = S.K, Nd = S.Nd(), d = S.d;
  at::parallel_for(0, S.N, grain(S.N, 2 * m * d), [&](int64_t b0, int64_t b1) {
    Vec acc[2][MAX_NODES];
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t x = 0; x < d; x += VL) {
        const int64_t n = std::min(VL, d - x), o = b * d + x;
        for (int64_t s = 0; s < 2; ++s) {
          for (int64_t k = 0; k < K; ++k) acc[s][k] = Vec(0.f);
          for (int64_t j = 0; j < m; ++j) {
            const Vec p = ld(P + (s * m + j) * Nd + o, n);
            const Vec t = tanh_r(p), r = relu_v(p), g = sigm(p);
            for (int64_t k = 0; k < K; ++k) acc[s][k] = mix4(thi + ((s * K + k) * m + j) * 4, t, r, g, p, acc[s][k]);
          }
          for (int64_t k = 0; k < K; ++k) st(AB + (k * 2 + s) * Nd + o, acc[s][k], n);
        }
        const Vec node = combine(S.code, S.cw, acc[0][0], acc[1][0]);
        st(NODES + o, node, n);
        if (K == 1) inter_out(S, NODES, node, X0, out, o, n);
      }
  });
}

// Level k >= 1: node k-1's projections Pn[k-1] feed every later node's branches; then node k.
static void inter_fwd_level(const InterShape& S, int64_t k, const float* Pnk, const std::vector<const float*>& thn,
                            float* AB, float* NODES, const float* X0, float* out) {
  const int64_t K = S.K, Nd = S.Nd(), d = S.d;
  at::parallel_for(0, S.N, grain(S.N, 2 * (K - k + 1) * d), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t x = 0; x < d; x += VL) {
        const int64_t n = std::min(VL, d - x), o = b * d + x;
        Vec ab[2];
        for (int64_t s = 0; s < 2; ++s) {
          const Vec p = ld(Pnk + s * Nd + o, n);
          const Vec t = tanh_r(p), r = relu_v(p), g = sigm(p);
          for (int64_t kk = k; kk < K; ++kk) {
            float* dst = AB + (kk * 2 + s) * Nd + o;
            const Vec v = mix4(thn[kk - 1] + (s * kk + k - 1) * 4, t, r, g, p, ld(dst, n));
            st(dst, v, n);
            if (kk == k) ab[s] = v;
          }
        }
        const Vec node = combine(S.code, S.cw, ab[0], ab[1]);
        st(NODES + k * Nd + o, node, n);
        if (k == K - 1) inter_out(S, NODES, node, X0, out, o, n);
      }
  });
}

// ------------------------------------------------------------------------------------------------
// The op norm (ess.supernet.base.OP_NORMS["op"]): each source row's four activations layer-normalised over the
// row, a_f = (f(p) - mu_f) r_f, r_f = 1 / sqrt(var_f + eps). SP [2, m, N, 8] and SN [K-1, 2, N, 8] keep
// (mu_0..3, r_0..3) of every row of P and Pn. Work is per row (the statistics are), on a [6, d] scratch row.
// The norm is shift-invariant: sigmoid is normalised as sigmoid - 1/2 = tanh(p / 2) / 2, whose float32 values keep
// their precision where sigmoid's sit near 1/2 (small projections: row deviations of 1e-3, float32's spacing at
// 1/2 is 6e-8), so its mu is that of sigmoid - 1/2.

static inline Vec tail(const Vec& v, int64_t n) { return n == VL ? v : Vec::set(Vec(0.f), v, n); }
static inline Vec sigm_c(const Vec& x) { const Vec h(0.5f); return h * tanh_r(x * h); }  // sigmoid(x) - 1/2
static inline float hsumf(const Vec& v) {
  return at::vec::vec_reduce_all<float>([](const Vec& a, const Vec& b) { return a + b; }, v);
}

// One source row p: its activations into buf [4, d] and their statistics into stat (two passes: the variance
// of centred values, as sigmoid's near-constant rows would lose it to E[x^2] - E[x]^2).
static void op_row_stats(const float* p, int64_t d, float eps, float* buf, float* stat) {
  Vec s[4] = {Vec(0.f), Vec(0.f), Vec(0.f), Vec(0.f)};
  for (int64_t x = 0; x < d; x += VL) {
    const int64_t n = std::min(VL, d - x);
    const Vec pv = ld(p + x, n);
    const Vec a[4] = {tanh_r(pv), relu_v(pv), sigm_c(pv), pv};  // 0 beyond the row
    for (int f = 0; f < 4; ++f) { st(buf + f * d + x, a[f], n); s[f] = s[f] + a[f]; }
  }
  float mu[4];
  Vec q[4] = {Vec(0.f), Vec(0.f), Vec(0.f), Vec(0.f)};
  for (int f = 0; f < 4; ++f) mu[f] = hsumf(s[f]) / (float)d;
  for (int64_t x = 0; x < d; x += VL) {
    const int64_t n = std::min(VL, d - x);
    for (int f = 0; f < 4; ++f) {
      const Vec c = tail(ld(buf + f * d + x, n) - Vec(mu[f]), n);
      q[f] = at::vec::fmadd(c, c, q[f]);
    }
  }
  for (int f = 0; f < 4; ++f) {
    stat[f] = mu[f];
    stat[4 + f] = 1.f / std::sqrt(hsumf(q[f]) / (float)d + eps);
  }
}

// dst (a row) += sum_f th_f a_f, the normalised activations of op_row_stats's row.
static inline void op_row_mix(const float* buf, const float* stat, const float* th, int64_t d, float* dst) {
  float c[4], off = 0.f;
  for (int f = 0; f < 4; ++f) { c[f] = th[f] * stat[4 + f]; off -= c[f] * stat[f]; }
  const Vec C0(c[0]), C1(c[1]), C2(c[2]), C3(c[3]), O(off);
  for (int64_t x = 0; x < d; x += VL) {
    const int64_t n = std::min(VL, d - x);
    const Vec base = ld(dst + x, n) + O;
    st(dst + x, at::vec::fmadd(C0, ld(buf + x, n), at::vec::fmadd(C1, ld(buf + d + x, n),
                at::vec::fmadd(C2, ld(buf + 2 * d + x, n), at::vec::fmadd(C3, ld(buf + 3 * d + x, n), base)))), n);
  }
}

// Back through one source row for its nc consumers c (op weights th[c], branch-gradient row g[c]):
// dA_f = sum_c th_c[f] g_c; dp = sum_f f'(p) r_f (dA_f - mean(dA_f) - a_f mean(dA_f a_f)). With acc, adds
// sum_x g_c a_f to acc[c][f] (the consumers' op-weight gradients). buf: [6, d] scratch.
static void op_row_bwd(const float* p, const float* stat, int64_t d, int64_t nc, const float* const* th,
                       const float* const* g, float* dp, Vec (*acc)[4], float* buf) {
  const Vec mu[4] = {Vec(stat[0]), Vec(stat[1]), Vec(stat[2]), Vec(stat[3])};
  const Vec r[4] = {Vec(stat[4]), Vec(stat[5]), Vec(stat[6]), Vec(stat[7])};
  Vec m1[4] = {Vec(0.f), Vec(0.f), Vec(0.f), Vec(0.f)}, m2[4] = {Vec(0.f), Vec(0.f), Vec(0.f), Vec(0.f)};
  for (int64_t x = 0; x < d; x += VL) {
    const int64_t n = std::min(VL, d - x);
    const Vec pv = ld(p + x, n), t = tanh_r(pv), sg = sigm_c(pv);
    const Vec f[4] = {t, relu_v(pv), sg, pv};
    Vec a[4], dA[4] = {Vec(0.f), Vec(0.f), Vec(0.f), Vec(0.f)};
    for (int q = 0; q < 4; ++q) a[q] = (f[q] - mu[q]) * r[q];
    for (int64_t c = 0; c < nc; ++c) {
      const Vec gc = ld(g[c] + x, n);  // zero beyond the row: so are dA, m1, m2 and acc's terms there
      for (int q = 0; q < 4; ++q) dA[q] = at::vec::fmadd(Vec(th[c][q]), gc, dA[q]);
      if (acc)
        for (int q = 0; q < 4; ++q) acc[c][q] = at::vec::fmadd(gc, a[q], acc[c][q]);
    }
    for (int q = 0; q < 4; ++q) {
      st(buf + q * d + x, dA[q], n);
      m1[q] = m1[q] + dA[q];
      m2[q] = at::vec::fmadd(dA[q], a[q], m2[q]);
    }
    st(buf + 4 * d + x, t, n);
    st(buf + 5 * d + x, sg, n);
  }
  Vec M1[4], M2[4];
  for (int q = 0; q < 4; ++q) { M1[q] = Vec(hsumf(m1[q]) / (float)d); M2[q] = Vec(hsumf(m2[q]) / (float)d); }
  const Vec one(1.f);
  for (int64_t x = 0; x < d; x += VL) {
    const int64_t n = std::min(VL, d - x);
    const Vec pv = ld(p + x, n), t = ld(buf + 4 * d + x, n), sg = ld(buf + 5 * d + x, n);
    const Vec f[4] = {t, relu_v(pv), sg, pv};
    const Vec slope[4] = {one - t * t, pos01(pv), Vec(0.25f) - sg * sg, one};
    Vec out(0.f);
    for (int q = 0; q < 4; ++q) {
      const Vec a = (f[q] - mu[q]) * r[q];
      const Vec dfp = r[q] * (ld(buf + q * d + x, n) - M1[q] - a * M2[q]);
      out = at::vec::fmadd(dfp, slope[q], out);
    }
    st(dp + x, out, n);
  }
}

// Level 0 under the op norm (as inter_fwd_level0): the statistics of the row's 2 m input projections (their
// activations kept in buf), then every node's op-weighted sums in one pass, a_f = (f - mu_f) r_f folded into
// per-row weights th r and offsets.
static void inter_fwd_level0_norm(const InterShape& S, const float* P, const float* thi, float eps, float* SP,
                                  float* AB, float* NODES, const float* X0, float* out) {
  const int64_t m = S.m, K = S.K, N = S.N, Nd = S.Nd(), d = S.d;
  at::parallel_for(0, N, grain(N, 2 * m * d), [&](int64_t b0, int64_t b1) {
    std::vector<float> buf(2 * m * 4 * d), coef(2 * K * m * 4), off(2 * K);
    Vec acc[2][MAX_NODES];
    for (int64_t b = b0; b < b1; ++b) {
      for (int64_t s = 0; s < 2; ++s)
        for (int64_t j = 0; j < m; ++j)
          op_row_stats(P + (s * m + j) * Nd + b * d, d, eps, buf.data() + (s * m + j) * 4 * d,
                       SP + ((s * m + j) * N + b) * 8);
      for (int64_t s = 0; s < 2; ++s)
        for (int64_t k = 0; k < K; ++k) {
          float o = 0.f;
          for (int64_t j = 0; j < m; ++j) {
            const float* th = thi + ((s * K + k) * m + j) * 4;
            const float* stat = SP + ((s * m + j) * N + b) * 8;
            for (int f = 0; f < 4; ++f) {
              const float c = th[f] * stat[4 + f];
              coef[((s * K + k) * m + j) * 4 + f] = c;
              o -= c * stat[f];
            }
          }
          off[s * K + k] = o;
        }
      for (int64_t x = 0; x < d; x += VL) {
        const int64_t n = std::min(VL, d - x), o = b * d + x;
        for (int64_t s = 0; s < 2; ++s) {
          for (int64_t k = 0; k < K; ++k) acc[s][k] = Vec(off[s * K + k]);
          for (int64_t j = 0; j < m; ++j) {
            const float* a = buf.data() + (s * m + j) * 4 * d + x;
            const Vec a0 = ld(a, n), a1 = ld(a + d, n), a2 = ld(a + 2 * d, n), a3 = ld(a + 3 * d, n);
            for (int64_t k = 0; k < K; ++k)
              acc[s][k] = mix4(coef.data() + ((s * K + k) * m + j) * 4, a0, a1, a2, a3, acc[s][k]);
          }
          for (int64_t k = 0; k < K; ++k) st(AB + (k * 2 + s) * Nd + o, acc[s][k], n);
        }
        const Vec node = combine(S.code, S.cw, acc[0][0], acc[1][0]);
        st(NODES + o, node, n);
        if (K == 1) inter_out(S, NODES, node, X0, out, o, n);
      }
    }
  });
}

// Level k >= 1 under the op norm (as inter_fwd_level): node k-1's projection rows' statistics, then their sums.
static void inter_fwd_level_norm(const InterShape& S, int64_t k, const float* Pnk, const std::vector<const float*>& thn,
                                 float eps, float* SNk, float* AB, float* NODES, const float* X0, float* out) {
  const int64_t K = S.K, N = S.N, Nd = S.Nd(), d = S.d;
  at::parallel_for(0, N, grain(N, 2 * (K - k + 1) * d), [&](int64_t b0, int64_t b1) {
    std::vector<float> buf(4 * d);
    for (int64_t b = b0; b < b1; ++b) {
      for (int64_t s = 0; s < 2; ++s) {
        float* stat = SNk + (s * N + b) * 8;
        op_row_stats(Pnk + s * Nd + b * d, d, eps, buf.data(), stat);
        for (int64_t kk = k; kk < K; ++kk)
          op_row_mix(buf.data(), stat, thn[kk - 1] + (s * kk + k - 1) * 4, d, AB + (kk * 2 + s) * Nd + b * d);
      }
      for (int64_t x = 0; x < d; x += VL) {
        const int64_t n = std::min(VL, d - x), o = b * d + x;
        const Vec node = combine(S.code, S.cw, ld(AB + (k * 2) * Nd + o, n), ld(AB + (k * 2 + 1) * Nd + o, n));
        st(NODES + k * Nd + o, node, n);
        if (k == K - 1) inter_out(S, NODES, node, X0, out, o, n);
      }
    }
  });
}

std::vector<Tensor> inter_fwd(const Tensor& X, const Tensor& W, const Tensor& theta_in,
                              const std::vector<Tensor>& theta_nodes, const std::optional<Tensor>& comb,
                              int64_t code, bool residual, bool op_norm, double eps) {
  const int64_t m = X.size(0), N = X.size(1), d = X.size(2), K = theta_in.size(1);
  const auto opts = X.options();
  Tensor cwc = comb && comb->defined() ? comb->contiguous() : Tensor();
  const InterShape S{m, K, N, d, code, residual, cwc.defined() ? cwc.data_ptr<float>() : nullptr};
  Tensor P = at::matmul(X.unsqueeze(0), W.narrow(1, 0, m));  // [2, m, N, d]
  Tensor AB = at::empty({K, 2, N, d}, opts);
  Tensor Pn = at::empty({std::max<int64_t>(K - 1, 0), 2, N, d}, opts);
  Tensor NODES = at::empty({K, N, d}, opts);
  Tensor out = at::empty({N, d}, opts);
  Tensor SP = op_norm ? at::empty({2, m, N, 8}, opts) : Tensor();
  Tensor SN = op_norm ? at::empty({std::max<int64_t>(K - 1, 0), 2, N, 8}, opts) : Tensor();
  std::vector<const float*> thn;
  for (auto& t : theta_nodes) thn.push_back(t.data_ptr<float>());
  if (op_norm)
    inter_fwd_level0_norm(S, P.data_ptr<float>(), theta_in.data_ptr<float>(), (float)eps, SP.data_ptr<float>(),
                          AB.data_ptr<float>(), NODES.data_ptr<float>(), X.data_ptr<float>(), out.data_ptr<float>());
  else
    inter_fwd_level0(S, P.data_ptr<float>(), theta_in.data_ptr<float>(), AB.data_ptr<float>(),
                     NODES.data_ptr<float>(), X.data_ptr<float>(), out.data_ptr<float>());
  for (int64_t k = 1; k < K; ++k) {
    Tensor pk = Pn[k - 1];
    for (int64_t s = 0; s < 2; ++s) {
      Tensor dst = pk[s];
      at::mm_out(dst, NODES[k - 1], W[s][m + k - 1]);
    }
    if (op_norm)
      inter_fwd_level_norm(S, k, pk.data_ptr<float>(), thn, (float)eps, SN[k - 1].data_ptr<float>(),
                           AB.data_ptr<float>(), NODES.data_ptr<float>(), X.data_ptr<float>(), out.data_ptr<float>());
    else
      inter_fwd_level(S, k, pk.data_ptr<float>(), thn, AB.data_ptr<float>(), NODES.data_ptr<float>(),
                      X.data_ptr<float>(), out.data_ptr<float>());
  }
  return {out, P, AB, Pn, NODES, SP, SN};
}

// Backward of level k: dAB[k] from dnode_k; node k's theta_nodes gradient (over the projections of nodes
// < k); then back through what level k read: dPn[k-1] (k >= 1: every consumer of node k-1 is done) or,
// at k = 0, dP and theta_in's gradient. part: this thread's partial sums (double), [dth | dcomb(2)].
// NORM: the op norm, with the row statistics SP, SN of the forward (op_row_bwd per source row).
template <bool NORM>
static void inter_bwd_level(const InterShape& S, int64_t k, const float* dn, const float* AB, const float* P,
                            const float* Pn, const float* thi, const std::vector<const float*>& thn, float* dAB,
                            float* dPn, float* dP, bool need_theta, std::vector<double>& partials, int64_t width,
                            const float* SP, const float* SN) {
  const int64_t m = S.m, K = S.K, N = S.N, Nd = S.Nd(), d = S.d;
  const bool search = S.code == 2;
  const Vec one(1.f);
  at::parallel_for(0, S.N, grain(S.N, 2 * (k == 0 ? m : K) * d), [&](int64_t b0, int64_t b1) {
    double* mine = partials.data() + (size_t)at::get_thread_num() * width;
    std::vector<float> buf(NORM ? 6 * d : 0);
    const float* ths[MAX_NODES];
    const float* gs[MAX_NODES];
    // 1. dAB[k] (and dcomb)
    Vec c0(0.f), c1(0.f);
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t x = 0; x < d; x += VL) {
        const int64_t n = std::min(VL, d - x), o = b * d + x;
        const Vec g = ld(dn + o, n), a = ld(AB + (k * 2) * Nd + o, n), bb = ld(AB + (k * 2 + 1) * Nd + o, n);
        Vec da, db;
        if (S.code == 0) { da = g * bb; db = g * a; }
        else if (S.code == 1) { da = g; db = g; }
        else {
          const Vec wp(S.cw[0]), ws(S.cw[1]);
          da = g * at::vec::fmadd(wp, bb, ws); db = g * at::vec::fmadd(wp, a, ws);
          c0 = at::vec::fmadd(g, a * bb, c0); c1 = at::vec::fmadd(g, a + bb, c1);
        }
        st(dAB + (k * 2) * Nd + o, da, n);
        st(dAB + (k * 2 + 1) * Nd + o, db, n);
      }
    if (search) { mine[width - 2] += hsum(c0); mine[width - 1] += hsum(c1); }
    // 2. theta_nodes[k-1]: sum dAB[k][s] op(Pn[kk][s]) over the rows, kk < k
    if (need_theta && k >= 1)
      for (int64_t s = 0; s < 2; ++s)
        for (int64_t kk = 0; kk < k; ++kk) {
          Vec a0(0.f), a1(0.f), a2(0.f), a3(0.f);
          for (int64_t b = b0; b < b1; ++b) {
            Vec mu[4], r[4];
            if constexpr (NORM) {
              const float* stat = SN + ((kk * 2 + s) * N + b) * 8;
              for (int q = 0; q < 4; ++q) { mu[q] = Vec(stat[q]); r[q] = Vec(stat[4 + q]); }
            }
            for (int64_t x = 0; x < d; x += VL) {
              const int64_t n = std::min(VL, d - x), o = b * d + x;
              const Vec g = ld(dAB + (k * 2 + s) * Nd + o, n), p = ld(Pn + (kk * 2 + s) * Nd + o, n);
              Vec f0 = tanh_r(p), f1 = relu_v(p), f2, f3 = p;
              if constexpr (NORM) {
                f2 = (sigm_c(p) - mu[2]) * r[2];
                f0 = (f0 - mu[0]) * r[0]; f1 = (f1 - mu[1]) * r[1]; f3 = (f3 - mu[3]) * r[3];
              } else {
                f2 = sigm(p);
              }
              a0 = at::vec::fmadd(g, f0, a0); a1 = at::vec::fmadd(g, f1, a1);
              a2 = at::vec::fmadd(g, f2, a2); a3 = at::vec::fmadd(g, f3, a3);
            }
          }
          double* dst = mine + (s * k + kk) * 4;
          dst[0] += hsum(a0); dst[1] += hsum(a1); dst[2] += hsum(a2); dst[3] += hsum(a3);
        }
    // 3. back through node k-1's projections: dPn[k-1][s] = slope(sum_{kk >= k} theta dAB[kk][s])
    if (NORM && k >= 1)
      for (int64_t s = 0; s < 2; ++s)
        for (int64_t b = b0; b < b1; ++b) {
          for (int64_t kk = k; kk < K; ++kk) {
            ths[kk - k] = thn[kk - 1] + (s * kk + k - 1) * 4;
            gs[kk - k] = dAB + (kk * 2 + s) * Nd + b * d;
          }
          op_row_bwd(Pn + ((k - 1) * 2 + s) * Nd + b * d, SN + (((k - 1) * 2 + s) * N + b) * 8, d, K - k, ths, gs,
                     dPn + ((k - 1) * 2 + s) * Nd + b * d, nullptr, buf.data());
        }
    if (!NORM && k >= 1)
      for (int64_t s = 0; s < 2; ++s)
        for (int64_t b = b0; b < b1; ++b)
          for (int64_t x = 0; x < d; x += VL) {
            const int64_t n = std::min(VL, d - x), o = b * d + x;
            Vec d0(0.f), d1(0.f), d2(0.f), d3(0.f);
            for (int64_t kk = k; kk < K; ++kk) {
              const float* th = thn[kk - 1] + (s * kk + k - 1) * 4;
              const Vec g = ld(dAB + (kk * 2 + s) * Nd + o, n);
              d0 = at::vec::fmadd(Vec(th[0]), g, d0); d1 = at::vec::fmadd(Vec(th[1]), g, d1);
              d2 = at::vec::fmadd(Vec(th[2]), g, d2); d3 = at::vec::fmadd(Vec(th[3]), g, d3);
            }
            st(dPn + ((k - 1) * 2 + s) * Nd + o, slope4(ld(Pn + ((k - 1) * 2 + s) * Nd + o, n), d0, d1, d2, d3), n);
          }
    // 4. level 0: dP[s, j] and theta_in's gradient
    if (NORM && k == 0)
      for (int64_t s = 0; s < 2; ++s)
        for (int64_t j = 0; j < m; ++j) {
          Vec acc[MAX_NODES][4];
          for (int64_t kk = 0; kk < K; ++kk) for (int q = 0; q < 4; ++q) acc[kk][q] = Vec(0.f);
          for (int64_t kk = 0; kk < K; ++kk) ths[kk] = thi + ((s * K + kk) * m + j) * 4;
          for (int64_t b = b0; b < b1; ++b) {
            for (int64_t kk = 0; kk < K; ++kk) gs[kk] = dAB + (kk * 2 + s) * Nd + b * d;
            op_row_bwd(P + (s * m + j) * Nd + b * d, SP + ((s * m + j) * N + b) * 8, d, K, ths, gs,
                       dP + (s * m + j) * Nd + b * d, need_theta ? acc : nullptr, buf.data());
          }
          if (need_theta)
            for (int64_t kk = 0; kk < K; ++kk)
              for (int q = 0; q < 4; ++q) mine[((s * K + kk) * m + j) * 4 + q] += hsum(acc[kk][q]);
        }
    if (!NORM && k == 0)
      for (int64_t s = 0; s < 2; ++s)
        for (int64_t j = 0; j < m; ++j) {
          Vec acc[MAX_NODES][4];
          if (need_theta)
            for (int64_t kk = 0; kk < K; ++kk) for (int q = 0; q < 4; ++q) acc[kk][q] = Vec(0.f);
          for (int64_t b = b0; b < b1; ++b)
            for (int64_t x = 0; x < d; x += VL) {
              const int64_t n = std::min(VL, d - x), o = b * d + x;
              const Vec p = ld(P + (s * m + j) * Nd + o, n);
              const Vec t = tanh_r(p), r = relu_v(p), g = sigm(p);
              Vec d0(0.f), d1(0.f), d2(0.f), d3(0.f);
              for (int64_t kk = 0; kk < K; ++kk) {
                const float* th = thi + ((s * K + kk) * m + j) * 4;
                const Vec gk = ld(dAB + (kk * 2 + s) * Nd + o, n);
                d0 = at::vec::fmadd(Vec(th[0]), gk, d0); d1 = at::vec::fmadd(Vec(th[1]), gk, d1);
                d2 = at::vec::fmadd(Vec(th[2]), gk, d2); d3 = at::vec::fmadd(Vec(th[3]), gk, d3);
                if (need_theta) {
                  acc[kk][0] = at::vec::fmadd(gk, t, acc[kk][0]); acc[kk][1] = at::vec::fmadd(gk, r, acc[kk][1]);
                  acc[kk][2] = at::vec::fmadd(gk, g, acc[kk][2]); acc[kk][3] = at::vec::fmadd(gk, p, acc[kk][3]);
                }
              }
              st(dP + (s * m + j) * Nd + o,
                 d0 * (one - t * t) + d1 * pos01(p) + d2 * g * (one - g) + d3, n);
            }
          if (need_theta)
            for (int64_t kk = 0; kk < K; ++kk)
              for (int q = 0; q < 4; ++q) mine[((s * K + kk) * m + j) * 4 + q] += hsum(acc[kk][q]);
        }
  });
}

std::vector<Tensor> inter_bwd(const Tensor& dout, const Tensor& X, const Tensor& W, const Tensor& theta_in,
                              const std::vector<Tensor>& theta_nodes, const std::optional<Tensor>& comb,
                              int64_t code, bool residual, const Tensor& P, const Tensor& AB, const Tensor& Pn,
                              const Tensor& NODES, const std::optional<Tensor>& SP, const std::optional<Tensor>& SN,
                              bool need_x, bool need_w, bool need_theta) {
  const int64_t m = X.size(0), N = X.size(1), d = X.size(2), K = theta_in.size(1);
  const auto opts = X.options();
  Tensor cwc = comb && comb->defined() ? comb->contiguous() : Tensor();
  const InterShape S{m, K, N, d, code, residual, cwc.defined() ? cwc.data_ptr<float>() : nullptr};
  const int nt = at::get_num_threads();
  const bool norm = SP && SP->defined();
  Tensor g = dout / (double)K;
  Tensor dAB = at::empty({K, 2, N, d}, opts);
  Tensor dPn = at::empty({std::max<int64_t>(K - 1, 0), 2, N, d}, opts);
  Tensor dP = at::empty({2, m, N, d}, opts);
  Tensor dW = need_w ? at::zeros_like(W) : Tensor();
  std::vector<const float*> thn;
  for (auto& t : theta_nodes) thn.push_back(t.data_ptr<float>());
  std::vector<Tensor> dthn(std::max<int64_t>(K - 1, 0));
  Tensor dthi;
  double dcomb[2] = {0, 0};
  for (int64_t k = K - 1; k >= 0; --k) {
    Tensor dn = g;
    if (k < K - 1) {  // node k feeds the later nodes through its projections Pn[k]
      dn = at::addmm(g, dPn[k][0], W[0][m + k].t());
      dn.addmm_(dPn[k][1], W[1][m + k].t());
      if (need_w)
        for (int64_t s = 0; s < 2; ++s) {
          Tensor dst = dW[s][m + k];
          at::mm_out(dst, NODES[k].t(), dPn[k][s]);
        }
    }
    const int64_t nth = k == 0 ? 2 * K * m * 4 : 2 * k * 4, width = nth + 2;
    std::vector<double> partials((size_t)nt * width, 0.0);
    Tensor dnc = dn.contiguous();
    if (norm)
      inter_bwd_level<true>(S, k, dnc.data_ptr<float>(), AB.data_ptr<float>(), P.data_ptr<float>(),
                            Pn.data_ptr<float>(), theta_in.data_ptr<float>(), thn, dAB.data_ptr<float>(),
                            dPn.data_ptr<float>(), dP.data_ptr<float>(), need_theta, partials, width, ptr(SP), ptr(SN));
    else
      inter_bwd_level<false>(S, k, dnc.data_ptr<float>(), AB.data_ptr<float>(), P.data_ptr<float>(),
                             Pn.data_ptr<float>(), theta_in.data_ptr<float>(), thn, dAB.data_ptr<float>(),
                             dPn.data_ptr<float>(), dP.data_ptr<float>(), need_theta, partials, width, nullptr,
                             nullptr);
    std::vector<double> total(width, 0.0);
    for (int t = 0; t < nt; ++t)
      for (int64_t q = 0; q < width; ++q) total[q] += partials[(size_t)t * width + q];
    dcomb[0] += total[nth]; dcomb[1] += total[nth + 1];
    if (need_theta) {
      Tensor dst = at::empty({nth}, opts.dtype(at::kDouble));
      std::copy(total.begin(), total.begin() + nth, dst.data_ptr<double>());
      if (k == 0) dthi = dst.view({2, K, m, 4}).to(X.scalar_type());
      else dthn[k - 1] = dst.view({2, k, 4}).to(X.scalar_type());
    }
  }
  Tensor dX;
  if (need_x) {
    dX = at::empty({m, N, d}, opts);
    for (int64_t j = 0; j < m; ++j) {
      Tensor dst = dX[j];
      at::mm_out(dst, dP[0][j], W[0][j].t());
      dst.addmm_(dP[1][j], W[1][j].t());
    }
    if (residual) dX[0].add_(dout);
  }
  if (need_w)
    for (int64_t s = 0; s < 2; ++s)
      for (int64_t j = 0; j < m; ++j) {
        Tensor dst = dW[s][j];
        at::mm_out(dst, X[j].t(), dP[s][j]);
      }
  Tensor dc = cwc.defined() ? at::tensor({dcomb[0], dcomb[1]}, opts.dtype(at::kDouble)).to(X.scalar_type()) : Tensor();
  std::vector<Tensor> res = {dX, dW, dthi, dc};
  for (auto& t : dthn) res.push_back(t);
  return res;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.attr("KERNEL_OPS") = pybind11::make_tuple("tanh", "relu", "sigmoid", "identity");
  m.def("intra_fwd", torch::wrap_pybind_function(intra_fwd), "intra_fwd");
  m.def("intra_bwd", torch::wrap_pybind_function(intra_bwd), "intra_bwd");
  m.def("darts_fwd", torch::wrap_pybind_function(darts_fwd), "darts_fwd");
  m.def("darts_bwd", torch::wrap_pybind_function(darts_bwd), "darts_bwd");
  m.def("inter_fwd", torch::wrap_pybind_function(inter_fwd), "inter_fwd");
  m.def("inter_bwd", torch::wrap_pybind_function(inter_bwd), "inter_bwd");
}

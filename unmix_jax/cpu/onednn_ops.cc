// oneDNN primitives as XLA FFI custom calls, float32 NHWC: direct convolution and transposed
// convolution (kernel HWIO, any kernel size, strides and explicit padding), forward and backward
// (input and kernel gradients), and training-mode batch normalisation + ReLU (end of
// file). The `transposed` attribute picks oneDNN's deconvolution, PyTorch's ConvTranspose2d
// convention (onednn.py flips the kernel to match lax). Built on first use by
// unmix_jax/cpu/onednn.py against oneDNN 3.x.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>
#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"
namespace ffi = xla::ffi;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

static dnnl::engine& eng() { static dnnl::engine e(dnnl::engine::kind::cpu, 0); return e; }

// A primitive and the size of the scratch memory it needs. XLA runs custom calls on any of its
// threads, two at once where the graph allows (the autoencoder's two decoders run the same
// layer shapes side by side). oneDNN's default library-managed scratchpad is one buffer shared
// by all primitives and valid only on the thread that created them: concurrent calls corrupted
// it and hung. In "user" mode each call brings its own (a per-thread buffer here).
struct Step {
  dnnl::primitive p;
  dnnl::memory::desc scratch;
};

// Everything a call needs besides the data: built once per layer shape (milliseconds each),
// then reused by every step. Weights live in oneDNN's blocked layout ("any") inside the
// primitives; the reorders convert from and to our HWIO layout.
struct Prims {
  dnnl::memory::desc src, dst, plain_w, w_fwd, w_bwd, dw;
  Step fwd, bwd_data, bwd_w, to_fwd, to_bwd, from_dw;
};

static void run(const Step& step, dnnl::stream& strm, std::unordered_map<int, dnnl::memory> args) {
  thread_local std::vector<uint8_t> buffer;
  if (buffer.size() < step.scratch.get_size()) buffer.resize(step.scratch.get_size());
  args.insert({DNNL_ARG_SCRATCHPAD, dnnl::memory(step.scratch, eng(), buffer.data())});
  step.p.execute(strm, args);
}

// Choosing among implementations. oneDNN lists several for each primitive (brgemm and jit
// kernels, each for AVX-512 and AVX2) and puts its guess first, which is not always the fastest:
// on a Zen 4, whose AVX-512 runs on 256-bit halves, the AVX2 brgemm kernels run the U-Net's
// 38-channel convs at 32x32 20-30% faster (38 channels fill 5 vectors of 8 floats better than 3
// of 16). A choice by time alone would tie the results to timing noise, so only implementations
// whose results equal the first's bit for bit, on random data of the layer's shape, compete: the
// brgemm kernels of both instruction sets sum in the same order and qualify, jit ones do not.
static dnnl::memory random_memory(const dnnl::memory::desc& d, uint32_t seed) {
  dnnl::memory m(d, eng());
  float* p = static_cast<float*>(m.get_data_handle());
  for (size_t i = 0; i < d.get_size() / sizeof(float); i++) {
    seed = seed * 1664525u + 1013904223u;
    p[i] = static_cast<float>(seed >> 8) / 16777216.0f - 0.5f;
  }
  return m;
}

// Runs `step` once for its result (`out`, plain layout, read by `result`); when that matches
// `reference` bit for bit (or there is none yet), twice more: the faster time in ms, else
// infinity.
template <class Result>
static double trial(const Step& step, const std::unordered_map<int, dnnl::memory>& args,
                    Result result, std::vector<char>& reference) {
  dnnl::stream strm(eng());
  run(step, strm, args);
  strm.wait();
  std::vector<char> out = result();
  if (reference.empty()) reference = out;
  if (out.size() != reference.size() ||
      std::memcmp(out.data(), reference.data(), out.size()) != 0) {
    return std::numeric_limits<double>::infinity();
  }
  double best = std::numeric_limits<double>::infinity();
  for (int i = 0; i < 2; i++) {
    auto t0 = std::chrono::steady_clock::now();
    run(step, strm, args);
    strm.wait();
    best = std::min(best, std::chrono::duration<double, std::milli>(
                              std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

static std::vector<char> bytes(const dnnl::memory& m) {
  const char* p = static_cast<const char*>(m.get_data_handle());
  return std::vector<char>(p, p + m.get_desc().get_size());
}

// `make()` returns a fresh descriptor (next_impl() changes one in place); `time(pd, reference)`
// runs `trial` on one implementation. Returns the descriptor of the fastest qualifying one, or
// oneDNN's first when `tune` is false.
template <class PD, class Make, class Time>
static PD fastest_equal(Make make, Time time, bool tune) {
  PD pd = make();
  if (!tune) return pd;
  std::vector<char> reference;
  int best = 0, i = 0;
  double best_ms = std::numeric_limits<double>::infinity();
  do {
    if (std::string(pd.impl_info_str()).rfind("ref", 0) != 0) {  // reference code: seconds
      double ms = time(pd, reference);
      if (ms < best_ms) best_ms = ms, best = i;
    }
    i++;
  } while (pd.next_impl());
  PD chosen = make();
  while (best-- > 0) chosen.next_impl();
  return chosen;
}

template <class Fwd, class BwdData, class BwdW>
static std::shared_ptr<Prims> build(dnnl::algorithm alg, const dnnl::memory::desc& src,
                                    const dnnl::memory::desc& plain_w,
                                    const dnnl::memory::desc& dst, const dnnl::memory::dims& s,
                                    const dnnl::memory::dims& pl, const dnnl::memory::dims& pr,
                                    bool tune) {
  dnnl::memory::desc wany(plain_w.get_dims(), dt::f32, tag::any);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  auto reorder = [&attr](const dnnl::memory::desc& a, const dnnl::memory::desc& b) {
    dnnl::reorder::primitive_desc rpd(eng(), a, eng(), b, attr);
    return Step{dnnl::reorder(rpd), rpd.scratchpad_desc()};
  };
  auto make_fwd = [&] {
    return typename Fwd::primitive_desc(eng(), dnnl::prop_kind::forward_training, alg, src, wany,
                                        dst, s, pl, pr, attr);
  };
  auto hint = make_fwd();  // the backward descriptors' hint: oneDNN's first forward choice
  dnnl::memory x, y, w;
  if (tune) x = random_memory(src, 1), y = random_memory(dst, 2), w = random_memory(plain_w, 3);
  // The weights in an implementation's own layout, converted from the same random `w`.
  auto weights_for = [&](const dnnl::memory::desc& d) {
    dnnl::memory m(d, eng());
    dnnl::stream strm(eng());
    run(reorder(plain_w, d), strm, {{DNNL_ARG_FROM, w}, {DNNL_ARG_TO, m}});
    strm.wait();
    return m;
  };
  auto fpd = fastest_equal<typename Fwd::primitive_desc>(make_fwd, [&](auto& pd, auto& ref) {
    dnnl::memory out(dst, eng());
    return trial(Step{Fwd(pd), pd.scratchpad_desc()},
                 {{DNNL_ARG_SRC, x}, {DNNL_ARG_WEIGHTS, weights_for(pd.weights_desc())},
                  {DNNL_ARG_DST, out}}, [&] { return bytes(out); }, ref);
  }, tune);
  auto make_bwd = [&] {
    return typename BwdData::primitive_desc(eng(), alg, src, wany, dst, s, pl, pr, hint, attr);
  };
  auto bpd = fastest_equal<typename BwdData::primitive_desc>(make_bwd, [&](auto& pd, auto& ref) {
    dnnl::memory out(src, eng());
    return trial(Step{BwdData(pd), pd.scratchpad_desc()},
                 {{DNNL_ARG_DIFF_DST, y}, {DNNL_ARG_WEIGHTS, weights_for(pd.weights_desc())},
                  {DNNL_ARG_DIFF_SRC, out}}, [&] { return bytes(out); }, ref);
  }, tune);
  auto make_bwd_w = [&] {
    return typename BwdW::primitive_desc(eng(), alg, src, wany, dst, s, pl, pr, hint, attr);
  };
  auto wpd = fastest_equal<typename BwdW::primitive_desc>(make_bwd_w, [&](auto& pd, auto& ref) {
    dnnl::memory out(pd.diff_weights_desc(), eng()), plain(plain_w, eng());
    return trial(Step{BwdW(pd), pd.scratchpad_desc()},
                 {{DNNL_ARG_SRC, x}, {DNNL_ARG_DIFF_DST, y}, {DNNL_ARG_DIFF_WEIGHTS, out}}, [&] {
                   dnnl::stream strm(eng());
                   run(reorder(pd.diff_weights_desc(), plain_w), strm,
                       {{DNNL_ARG_FROM, out}, {DNNL_ARG_TO, plain}});
                   strm.wait();
                   return bytes(plain);
                 }, ref);
  }, tune);
  return std::make_shared<Prims>(Prims{
      src, dst, plain_w, fpd.weights_desc(), bpd.weights_desc(), wpd.diff_weights_desc(),
      Step{Fwd(fpd), fpd.scratchpad_desc()}, Step{BwdData(bpd), bpd.scratchpad_desc()},
      Step{BwdW(wpd), wpd.scratchpad_desc()}, reorder(plain_w, fpd.weights_desc()),
      reorder(plain_w, bpd.weights_desc()), reorder(wpd.diff_weights_desc(), plain_w)});
}

// x [n, h, w, ci], y [n, oh, ow, co], kernel [kh, kw, ci, co]. Every caller holds
// `one_at_a_time` (below, through `guarded`), which also guards the cache.
using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                       int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool>;

static std::shared_ptr<Prims> get(ffi::Span<const int64_t> x, ffi::Span<const int64_t> k,
                                  ffi::Span<const int64_t> y, int64_t sh, int64_t sw,
                                  int64_t pt, int64_t pl, int64_t pb, int64_t pr, bool transposed,
                                  bool tune = false) {
  static std::map<Key, std::shared_ptr<Prims>> cache;
  Key key{x[0], x[1], x[2], x[3], k[0], k[1], k[3], y[1], y[2], sh, sw, pt, pl, pb, pr,
          transposed};
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  dnnl::memory::desc src({x[0], x[3], x[1], x[2]}, dt::f32, tag::nhwc);
  dnnl::memory::desc dst({y[0], y[3], y[1], y[2]}, dt::f32, tag::nhwc);
  dnnl::memory::desc plain_w({k[3], k[2], k[0], k[1]}, dt::f32, tag::hwio);
  dnnl::memory::dims s{sh, sw}, lo{pt, pl}, hi{pb, pr};
  auto made = transposed
      ? build<dnnl::deconvolution_forward, dnnl::deconvolution_backward_data,
              dnnl::deconvolution_backward_weights>(dnnl::algorithm::deconvolution_direct, src,
                                                    plain_w, dst, s, lo, hi, tune)
      : build<dnnl::convolution_forward, dnnl::convolution_backward_data,
              dnnl::convolution_backward_weights>(dnnl::algorithm::convolution_direct, src,
                                                  plain_w, dst, s, lo, hi, tune);
  cache[key] = made;
  return made;
}

// oneDNN reports failures by exception, which must not cross the C boundary into XLA.
// One call at a time, of every kind: each spreads over every core with OpenMP, so two that XLA
// starts side by side (a layer's input and kernel gradients, the autoencoder's two decoders)
// only oversubscribe the cores. The mutex sits outside the template: a static inside it would
// be one per call site, which would let a layer's two gradients run together.
static std::mutex one_at_a_time;

template <typename F>
static ffi::Error guarded(F body) {
  std::lock_guard<std::mutex> lock(one_at_a_time);
  try {
    body();
    return ffi::Error::Success();
  } catch (const std::exception& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN convolution: ") + e.what());
  }
}

ffi::Error FwdImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> y,
                   int64_t sh, int64_t sw, int64_t pt, int64_t pl, int64_t pb, int64_t pr,
                   bool transposed) {
  return guarded([&] {
    auto p = get(x.dimensions(), w.dimensions(), y->dimensions(), sh, sw, pt, pl, pb, pr,
                 transposed);
    dnnl::stream strm(eng());  // one per call: XLA may run two custom calls at once
    dnnl::memory wp(p->plain_w, eng(), w.typed_data()), wb(p->w_fwd, eng());
    run(p->to_fwd, strm, {{DNNL_ARG_FROM, wp}, {DNNL_ARG_TO, wb}});
    run(p->fwd, strm, {{DNNL_ARG_SRC, dnnl::memory(p->src, eng(), x.typed_data())},
                       {DNNL_ARG_WEIGHTS, wb},
                       {DNNL_ARG_DST, dnnl::memory(p->dst, eng(), y->typed_data())}});
    strm.wait();
  });
}

// The input and kernel gradients are separate calls so that XLA drops the first where nothing
// needs it (the input of the first layer is data).
ffi::Error BwdDataImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> dy,
                       ffi::ResultBuffer<ffi::F32> dx, int64_t sh, int64_t sw, int64_t pt,
                       int64_t pl, int64_t pb, int64_t pr, bool transposed) {
  return guarded([&] {
    auto p = get(x.dimensions(), w.dimensions(), dy.dimensions(), sh, sw, pt, pl, pb, pr,
                 transposed);
    dnnl::stream strm(eng());
    dnnl::memory wp(p->plain_w, eng(), w.typed_data()), wb(p->w_bwd, eng());
    run(p->to_bwd, strm, {{DNNL_ARG_FROM, wp}, {DNNL_ARG_TO, wb}});
    run(p->bwd_data, strm, {{DNNL_ARG_DIFF_DST, dnnl::memory(p->dst, eng(), dy.typed_data())},
                            {DNNL_ARG_WEIGHTS, wb},
                            {DNNL_ARG_DIFF_SRC, dnnl::memory(p->src, eng(), dx->typed_data())}});
    strm.wait();
  });
}

ffi::Error BwdWeightsImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                          ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dw, int64_t sh,
                          int64_t sw, int64_t pt, int64_t pl, int64_t pb, int64_t pr,
                          bool transposed) {
  return guarded([&] {
    auto p = get(x.dimensions(), w.dimensions(), dy.dimensions(), sh, sw, pt, pl, pb, pr,
                 transposed);
    dnnl::stream strm(eng());
    dnnl::memory dwb(p->dw, eng());
    run(p->bwd_w, strm, {{DNNL_ARG_SRC, dnnl::memory(p->src, eng(), x.typed_data())},
                         {DNNL_ARG_DIFF_DST, dnnl::memory(p->dst, eng(), dy.typed_data())},
                         {DNNL_ARG_DIFF_WEIGHTS, dwb}});
    dnnl::memory dwp(p->plain_w, eng(), dw->typed_data());
    run(p->from_dw, strm, {{DNNL_ARG_FROM, dwb}, {DNNL_ARG_TO, dwp}});
    strm.wait();
  });
}

// Builds a layer's primitives with the fastest qualifying implementations (see `fastest_equal`);
// onednn.py calls it while tracing, when no step runs to disturb the timings. A call at run time
// that finds no primitives builds oneDNN's first choices, which compute the same bits. Returns
// 0, or -1 where oneDNN cannot build them (the custom call then reports why).
extern "C" int UnmixPrepareConv(int64_t n, int64_t h, int64_t w, int64_t ci, int64_t kh,
                                int64_t kw, int64_t co, int64_t oh, int64_t ow, int64_t sh,
                                int64_t sw, int64_t pt, int64_t pl, int64_t pb, int64_t pr,
                                bool transposed) {
  int64_t x[4] = {n, h, w, ci}, k[4] = {kh, kw, ci, co}, y[4] = {n, oh, ow, co};
  auto span = [](const int64_t* d) { return ffi::Span<const int64_t>(d, 4); };
  return guarded([&] { get(span(x), span(k), span(y), sh, sw, pt, pl, pb, pr, transposed, true); })
                 .success()
             ? 0
             : -1;
}

#define UNMIX_CONV_ATTRS                                                                   \
  .Attr<int64_t>("sh").Attr<int64_t>("sw").Attr<int64_t>("pad_top").Attr<int64_t>("pad_left") \
      .Attr<int64_t>("pad_bottom").Attr<int64_t>("pad_right").Attr<bool>("transposed")

XLA_FFI_DEFINE_HANDLER_SYMBOL(DnnlConvFwd, FwdImpl,
    ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
        .Ret<ffi::Buffer<ffi::F32>>() UNMIX_CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(DnnlConvBwdData, BwdDataImpl,
    ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
        .Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>() UNMIX_CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(DnnlConvBwdWeights, BwdWeightsImpl,
    ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
        .Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>() UNMIX_CONV_ATTRS);

// Training-mode batch normalisation with the ReLU that follows it, over the channels of an NHWC
// float32 tensor: scale and shift on, batch mean and biased variance computed and returned.
// The forward writes a workspace (the ReLU mask) that the backward reads; `UnmixBnWorkspaceBytes`
// tells Python its size.
struct BnPrims {
  dnnl::memory::desc data, channels, ws;
  Step fwd, bwd;
};

static std::shared_ptr<BnPrims> get_bn(ffi::Span<const int64_t> x, float eps) {
  static std::map<std::tuple<int64_t, int64_t, int64_t, int64_t, float>,
                  std::shared_ptr<BnPrims>> cache;
  static std::mutex mu;
  std::lock_guard<std::mutex> l(mu);
  auto key = std::make_tuple(x[0], x[1], x[2], x[3], eps);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  dnnl::memory::desc data({x[0], x[3], x[1], x[2]}, dt::f32, tag::nhwc);
  dnnl::memory::desc channels({x[3]}, dt::f32, tag::x);
  auto flags = dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift |
               dnnl::normalization_flags::fuse_norm_relu;
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  dnnl::batch_normalization_forward::primitive_desc fpd(
      eng(), dnnl::prop_kind::forward_training, data, data, eps, flags, attr);
  dnnl::batch_normalization_backward::primitive_desc bpd(
      eng(), dnnl::prop_kind::backward, data, data, data, eps, flags, fpd, attr);
  auto made = std::make_shared<BnPrims>(BnPrims{
      data, channels, fpd.workspace_desc(),
      Step{dnnl::batch_normalization_forward(fpd), fpd.scratchpad_desc()},
      Step{dnnl::batch_normalization_backward(bpd), bpd.scratchpad_desc()}});
  cache[key] = made;
  return made;
}

static dnnl::memory mem(const dnnl::memory::desc& d, void* data) {
  return dnnl::memory(d, eng(), data);
}

extern "C" int64_t UnmixBnWorkspaceBytes(int64_t n, int64_t h, int64_t w, int64_t c, float eps) {
  try {
    int64_t dims[4] = {n, h, w, c};
    return static_cast<int64_t>(get_bn(ffi::Span<const int64_t>(dims, 4), eps)->ws.get_size());
  } catch (const std::exception&) {
    return -1;
  }
}

ffi::Error BnFwdImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale,
                     ffi::Buffer<ffi::F32> shift, ffi::ResultBuffer<ffi::F32> y,
                     ffi::ResultBuffer<ffi::F32> mean, ffi::ResultBuffer<ffi::F32> var,
                     ffi::ResultBuffer<ffi::U8> ws, float eps) {
  return guarded([&] {
    auto p = get_bn(x.dimensions(), eps);
    dnnl::stream strm(eng());
    run(p->fwd, strm, {{DNNL_ARG_SRC, mem(p->data, x.typed_data())},
                       {DNNL_ARG_SCALE, mem(p->channels, scale.typed_data())},
                       {DNNL_ARG_SHIFT, mem(p->channels, shift.typed_data())},
                       {DNNL_ARG_DST, mem(p->data, y->typed_data())},
                       {DNNL_ARG_MEAN, mem(p->channels, mean->typed_data())},
                       {DNNL_ARG_VARIANCE, mem(p->channels, var->typed_data())},
                       {DNNL_ARG_WORKSPACE, mem(p->ws, ws->typed_data())}});
    strm.wait();
  });
}

ffi::Error BnBwdImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> mean,
                     ffi::Buffer<ffi::F32> var, ffi::Buffer<ffi::F32> scale,
                     ffi::Buffer<ffi::U8> ws,
                     ffi::Buffer<ffi::F32> dy,
                     ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> dscale,
                     ffi::ResultBuffer<ffi::F32> dshift, float eps) {
  return guarded([&] {
    auto p = get_bn(x.dimensions(), eps);
    dnnl::stream strm(eng());
    run(p->bwd, strm, {{DNNL_ARG_SRC, mem(p->data, x.typed_data())},
                       {DNNL_ARG_MEAN, mem(p->channels, mean.typed_data())},
                       {DNNL_ARG_VARIANCE, mem(p->channels, var.typed_data())},
                       {DNNL_ARG_SCALE, mem(p->channels, scale.typed_data())},
                       {DNNL_ARG_WORKSPACE, mem(p->ws, ws.typed_data())},
                       {DNNL_ARG_DIFF_DST, mem(p->data, dy.typed_data())},
                       {DNNL_ARG_DIFF_SRC, mem(p->data, dx->typed_data())},
                       {DNNL_ARG_DIFF_SCALE, mem(p->channels, dscale->typed_data())},
                       {DNNL_ARG_DIFF_SHIFT, mem(p->channels, dshift->typed_data())}});
    strm.wait();
  });
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(DnnlBnFwd, BnFwdImpl,
    ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
        .Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>()
        .Ret<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::U8>>().Attr<float>("eps"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(DnnlBnBwd, BnBwdImpl,
    ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
        .Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
        .Arg<ffi::Buffer<ffi::U8>>().Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>()
        .Ret<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>().Attr<float>("eps"));

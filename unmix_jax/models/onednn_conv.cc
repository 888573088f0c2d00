// oneDNN's direct 3x3 'SAME' stride-1 convolution (x NHWC, kernel HWIO, float32) as two XLA FFI
// custom calls: the forward, and the backward pass (input and kernel gradients in one call).
// Built on first use by unmix_jax/models/onednn.py against oneDNN 2.x (Debian: libdnnl-dev).
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>
#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"
namespace ffi = xla::ffi;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

static dnnl::engine& eng() { static dnnl::engine e(dnnl::engine::kind::cpu, 0); return e; }

struct Prims {
  dnnl::convolution_forward::primitive_desc fwd;
  dnnl::convolution_backward_data::primitive_desc bwd_data;
  dnnl::convolution_backward_weights::primitive_desc bwd_w;
};
using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t>;
static std::map<Key, std::shared_ptr<Prims>> cache;
static std::mutex mu;

// Primitive descriptors per shape: building one takes milliseconds, a step calls each many times.
static std::shared_ptr<Prims> get(int64_t n, int64_t h, int64_t w, int64_t ci, int64_t co) {
  std::lock_guard<std::mutex> l(mu);
  Key k{n, h, w, ci, co};
  auto it = cache.find(k);
  if (it != cache.end()) return it->second;
  dnnl::memory::desc src({n, ci, h, w}, dt::f32, tag::nhwc);
  dnnl::memory::desc dst({n, co, h, w}, dt::f32, tag::nhwc);
  dnnl::memory::desc wany({co, ci, 3, 3}, dt::f32, tag::any);
  dnnl::memory::dims s{1, 1}, p{1, 1};
  auto alg = dnnl::algorithm::convolution_direct;
  dnnl::convolution_forward::desc fd(dnnl::prop_kind::forward_training, alg, src, wany, dst, s, p, p);
  dnnl::convolution_forward::primitive_desc fpd(fd, eng());
  dnnl::convolution_backward_data::desc bd(alg, src, wany, dst, s, p, p);
  dnnl::convolution_backward_data::primitive_desc bpd(bd, eng(), fpd);
  dnnl::convolution_backward_weights::desc wd(alg, src, wany, dst, s, p, p);
  dnnl::convolution_backward_weights::primitive_desc wpd(wd, eng(), fpd);
  auto pr = std::make_shared<Prims>(Prims{fpd, bpd, wpd});
  cache[k] = pr;
  return pr;
}

// Our kernel layout; oneDNN picks its own blocked layout ("any") and we reorder to and from it.
static dnnl::memory plain_w(int64_t ci, int64_t co, void* p) {
  return dnnl::memory({{co, ci, 3, 3}, dt::f32, tag::hwio}, eng(), p);
}

// oneDNN reports failures by exception, which must not cross the C boundary into XLA.
template <typename F>
static ffi::Error guarded(F body) {
  try {
    body();
    return ffi::Error::Success();
  } catch (const std::exception& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN convolution: ") + e.what());
  }
}

ffi::Error FwdImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> y) {
  return guarded([&] {
    auto d = x.dimensions();
    int64_t ci = d[3], co = w.dimensions()[3];
    auto pr = get(d[0], d[1], d[2], ci, co);
    dnnl::stream strm(eng());  // one per call: XLA may run two custom calls at once
    dnnl::memory src(pr->fwd.src_desc(), eng(), x.typed_data());
    dnnl::memory dst(pr->fwd.dst_desc(), eng(), y->typed_data());
    auto wp = plain_w(ci, co, w.typed_data());
    dnnl::memory wb(pr->fwd.weights_desc(), eng());
    dnnl::reorder(wp, wb).execute(strm, wp, wb);
    dnnl::convolution_forward(pr->fwd).execute(
        strm, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wb}, {DNNL_ARG_DST, dst}});
    strm.wait();
  });
}

ffi::Error BwdImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> dy,
                   ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> dw) {
  return guarded([&] {
    auto d = x.dimensions();
    int64_t ci = d[3], co = w.dimensions()[3];
    auto pr = get(d[0], d[1], d[2], ci, co);
    dnnl::stream strm(eng());
    dnnl::memory src(pr->fwd.src_desc(), eng(), x.typed_data());
    dnnl::memory ddst(pr->fwd.dst_desc(), eng(), dy.typed_data());
    dnnl::memory dsrc(pr->fwd.src_desc(), eng(), dx->typed_data());
    auto wp = plain_w(ci, co, w.typed_data());
    dnnl::memory wb(pr->bwd_data.weights_desc(), eng());
    dnnl::reorder(wp, wb).execute(strm, wp, wb);
    dnnl::convolution_backward_data(pr->bwd_data).execute(
        strm, {{DNNL_ARG_DIFF_DST, ddst}, {DNNL_ARG_WEIGHTS, wb}, {DNNL_ARG_DIFF_SRC, dsrc}});
    dnnl::memory dwb(pr->bwd_w.diff_weights_desc(), eng());
    dnnl::convolution_backward_weights(pr->bwd_w).execute(
        strm, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, ddst}, {DNNL_ARG_DIFF_WEIGHTS, dwb}});
    auto dwp = plain_w(ci, co, dw->typed_data());
    dnnl::reorder(dwb, dwp).execute(strm, dwb, dwp);
    strm.wait();
  });
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(DnnlConvFwd, FwdImpl,
    ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(DnnlConvBwd, BwdImpl,
    ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
        .Ret<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>());

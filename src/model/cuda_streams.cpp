// CUDA streams and events for carwatch's upload path (see src/model/cuda.rs).
//
// tch exposes neither, so this file reaches them through c10's device-generic API
// (c10::Stream, c10::Event, the CUDA DeviceGuardImpl that libtorch_cuda registers):
// no CUDA headers are needed to build it, and on a machine without CUDA nothing here
// is called. Every function catches C++ exceptions and returns non-zero, with the
// message available from cw_last_error() on the same thread.

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/Event.h>
#include <c10/core/Stream.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <cstdint>
#include <exception>
#include <string>

namespace {

thread_local std::string last_error;

template <class F>
int guarded(F f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    last_error = e.what();
  } catch (...) {
    last_error = "unknown C++ exception";
  }
  return 1;
}

const c10::impl::DeviceGuardImplInterface* cuda_impl() {
  return c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA);
}

c10::Device cuda_device(int index) {
  return c10::Device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(index));
}

}  // namespace

extern "C" {

// A c10::Stream, packed (c10::Stream::pack3).
struct cw_stream {
  int64_t id;
  int32_t device_index;
  int32_t device_type;
};

static c10::Stream unpack(cw_stream s) {
  return c10::Stream::unpack3(s.id, static_cast<c10::DeviceIndex>(s.device_index),
                              static_cast<c10::DeviceType>(s.device_type));
}

static cw_stream pack(const c10::Stream& s) {
  auto d = s.pack3();
  return cw_stream{d.stream_id, static_cast<int32_t>(d.device_index), static_cast<int32_t>(d.device_type)};
}

const char* cw_last_error() { return last_error.c_str(); }

int cw_stream_from_pool(int device, cw_stream* out) {
  return guarded([&] { *out = pack(cuda_impl()->getStreamFromGlobalPool(cuda_device(device), false)); });
}

int cw_stream_current(int device, cw_stream* out) {
  return guarded([&] { *out = pack(cuda_impl()->getStream(cuda_device(device))); });
}

// Makes `s` the current stream of its device; `previous` receives the one it replaced.
int cw_stream_exchange(cw_stream s, cw_stream* previous) {
  return guarded([&] { *previous = pack(cuda_impl()->exchangeStream(unpack(s))); });
}

int cw_event_new(void** out) {
  return guarded([&] { *out = new c10::Event(c10::DeviceType::CUDA); });
}

void cw_event_free(void* event) { delete static_cast<c10::Event*>(event); }

int cw_event_record(void* event, cw_stream s) {
  return guarded([&] { static_cast<c10::Event*>(event)->record(unpack(s)); });
}

// Work queued on `s` after this waits for the event (no host wait).
int cw_event_block(void* event, cw_stream s) {
  return guarded([&] { static_cast<c10::Event*>(event)->block(unpack(s)); });
}

int cw_event_synchronize(void* event) {
  return guarded([&] { static_cast<c10::Event*>(event)->synchronize(); });
}

// dst.copy_(src, non_blocking=true): asynchronous on the current stream when src is
// pinned host memory and dst is on the GPU.
int cw_copy_async(at::Tensor* dst, const at::Tensor* src) {
  return guarded([&] { dst->copy_(*src, /*non_blocking=*/true); });
}

}  // extern "C"

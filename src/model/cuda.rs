//! CUDA streams and events, which tch does not expose.
//!
//! The GPU upload path ([`super::feed`]) copies a batch from pinned host memory on a
//! side stream while the default stream is still busy with the previous batch's
//! backbone, and orders the two with events. These are thin, safe wrappers over
//! `cuda_streams.cpp`, which calls c10's device-generic stream API. Nothing here is
//! called unless the model runs on CUDA.

use std::ffi::{CStr, c_char, c_int, c_void};

use tch::Tensor;

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RawStream {
    id: i64,
    device_index: i32,
    device_type: i32,
}

unsafe extern "C" {
    fn cw_last_error() -> *const c_char;
    fn cw_stream_from_pool(device: c_int, out: *mut RawStream) -> c_int;
    fn cw_stream_current(device: c_int, out: *mut RawStream) -> c_int;
    fn cw_stream_exchange(s: RawStream, previous: *mut RawStream) -> c_int;
    fn cw_event_new(out: *mut *mut c_void) -> c_int;
    fn cw_event_free(event: *mut c_void);
    fn cw_event_record(event: *mut c_void, s: RawStream) -> c_int;
    fn cw_event_block(event: *mut c_void, s: RawStream) -> c_int;
    fn cw_event_synchronize(event: *mut c_void) -> c_int;
    fn cw_copy_async(dst: *mut torch_sys::C_tensor, src: *const torch_sys::C_tensor) -> c_int;
}

/// A libtorch C++ exception, as text.
#[derive(Debug, thiserror::Error)]
#[error("CUDA {what}: {message}")]
pub struct CudaError {
    what: &'static str,
    message: String,
}

fn check(rc: c_int, what: &'static str) -> Result<(), CudaError> {
    if rc == 0 {
        return Ok(());
    }
    // SAFETY: cw_last_error returns a NUL-terminated thread-local string that lives
    // until the next failing call on this thread; it is copied at once.
    let message = unsafe { CStr::from_ptr(cw_last_error()) }.to_string_lossy().into_owned();
    Err(CudaError { what, message })
}

/// A CUDA stream of one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stream(RawStream);

impl Stream {
    /// A stream from libtorch's pool, separate from the default one.
    pub fn from_pool(device: usize) -> Result<Stream, CudaError> {
        let mut raw = RawStream { id: 0, device_index: 0, device_type: 0 };
        // SAFETY: `raw` is a valid out-pointer for the call.
        check(unsafe { cw_stream_from_pool(device as c_int, &mut raw) }, "getting a stream from the pool")?;
        Ok(Stream(raw))
    }

    /// The stream libtorch queues work on now, on `device`.
    pub fn current(device: usize) -> Result<Stream, CudaError> {
        let mut raw = RawStream { id: 0, device_index: 0, device_type: 0 };
        // SAFETY: as above.
        check(unsafe { cw_stream_current(device as c_int, &mut raw) }, "reading the current stream")?;
        Ok(Stream(raw))
    }

    /// Makes this the current stream until the guard drops.
    pub fn enter(self) -> Result<StreamGuard, CudaError> {
        let mut previous = self.0;
        // SAFETY: `previous` is a valid out-pointer; the stream came from libtorch.
        check(unsafe { cw_stream_exchange(self.0, &mut previous) }, "switching streams")?;
        Ok(StreamGuard { previous: Stream(previous) })
    }
}

/// Restores the previous current stream when dropped.
pub struct StreamGuard {
    previous: Stream,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut ignored = self.previous.0;
        // SAFETY: as in `enter`. Switching back to a stream that was current a moment
        // ago cannot fail short of a broken device, which the next kernel reports.
        unsafe { cw_stream_exchange(self.previous.0, &mut ignored) };
    }
}

/// A CUDA event: a point in a stream that other streams or the host can wait for.
pub struct Event(*mut c_void);

// SAFETY: a c10::Event is a plain handle; carwatch uses each from one thread at a time.
unsafe impl Send for Event {}

impl Event {
    /// An event not yet recorded: waiting for it returns at once.
    pub fn new() -> Result<Event, CudaError> {
        let mut ptr = std::ptr::null_mut();
        // SAFETY: `ptr` is a valid out-pointer; the event is freed in Drop.
        check(unsafe { cw_event_new(&mut ptr) }, "creating an event")?;
        Ok(Event(ptr))
    }

    /// Marks the point, in `stream`, that work queued so far reaches.
    pub fn record(&mut self, stream: Stream) -> Result<(), CudaError> {
        // SAFETY: self.0 is a live event.
        check(unsafe { cw_event_record(self.0, stream.0) }, "recording an event")
    }

    /// Work queued on `stream` from now on waits for the recorded point (the host does
    /// not wait).
    pub fn block(&self, stream: Stream) -> Result<(), CudaError> {
        // SAFETY: self.0 is a live event.
        check(unsafe { cw_event_block(self.0, stream.0) }, "making a stream wait for an event")
    }

    /// The host waits until the recorded point is reached.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        // SAFETY: self.0 is a live event.
        check(unsafe { cw_event_synchronize(self.0) }, "waiting for an event")
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: created by cw_event_new, freed once.
        unsafe { cw_event_free(self.0) }
    }
}

/// `dst.copy_(src, non_blocking = true)` on the current stream: with `src` in pinned
/// host memory and `dst` on the GPU the host returns at once. `src` must not be
/// written until an event recorded after this call is reached.
pub fn copy_async(dst: &mut Tensor, src: &Tensor) -> Result<(), CudaError> {
    // SAFETY: both pointers are live tch tensors (at::Tensor*), borrowed for the call.
    check(unsafe { cw_copy_async(dst.as_mut_ptr(), src.as_ptr()) }, "copying to the device")
}

//! Live RTSP cameras on loopback, showing synthetic scenes.
//!
//! A gst-rtsp-server instance on 127.0.0.1 (a free port, or a chosen one) with one
//! mount per scene; each mount serves its scene as H.264 (encoded once at start, one GOP
//! per segment) and loops it forever, like an IP camera. It runs on its own GLib main
//! loop thread. Used by the integration tests and `carwatch bench pipeline`;
//! [`RtspServer::stop`] closes every client connection, which is how tests make a
//! camera go away.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use gstreamer as gst;
use gstreamer::glib;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_rtsp_server as rtsp;
use gstreamer_rtsp_server::prelude::*;

use super::video::{Encoded, Scene, encode_segments};

/// A running server; stops when dropped.
pub struct RtspServer {
    port: u16,
    main_loop: glib::MainLoop,
    context: glib::MainContext,
    server: Arc<Mutex<Option<rtsp::RTSPServer>>>,
    thread: Option<JoinHandle<()>>,
}

/// Credentials a mount requires (Basic authentication).
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl RtspServer {
    /// Serves each `(path, scene)` on `127.0.0.1:port` (0 picks a free port).
    pub fn start(
        mounts: Vec<(String, Scene)>,
        port: u16,
        credentials: Option<Credentials>,
    ) -> Result<RtspServer, String> {
        gst::init().map_err(|e| e.to_string())?;
        // Each distinct scene is encoded once, however many mounts show it.
        let mut encoded: Vec<(String, Arc<Encoded>)> = Vec::new();
        let mut mounts_encoded = Vec::with_capacity(mounts.len());
        for (path, scene) in mounts {
            let key = format!("{scene:?}");
            let e = match encoded.iter().find(|(k, _)| *k == key) {
                Some((_, e)) => Arc::clone(e),
                None => {
                    let e = Arc::new(encode_segments(&scene)?);
                    encoded.push((key, Arc::clone(&e)));
                    e
                }
            };
            mounts_encoded.push((path, scene, e));
        }
        let mounts = mounts_encoded;
        let context = glib::MainContext::new();
        let main_loop = glib::MainLoop::new(Some(&context), false);
        let (ready_tx, ready_rx) = crossbeam_channel::bounded::<Result<u16, String>>(1);
        let shared: Arc<Mutex<Option<rtsp::RTSPServer>>> = Arc::new(Mutex::new(None));
        let (ctx, ml, slot) = (context.clone(), main_loop.clone(), Arc::clone(&shared));
        let thread = std::thread::Builder::new()
            .name("rtsp-server".into())
            .spawn(move || {
                let result = ctx.with_thread_default(|| {
                    let server = rtsp::RTSPServer::new();
                    server.set_address("127.0.0.1");
                    server.set_service(&port.to_string());
                    let Some(points) = server.mount_points() else { return Err("no mount points".to_string()) };
                    for (path, scene, encoded) in mounts {
                        points.add_factory(&path, factory(scene, encoded, credentials.as_ref()));
                    }
                    if let Some(c) = &credentials {
                        let auth = rtsp::RTSPAuth::new();
                        let token = rtsp::RTSPToken::builder()
                            .field(rtsp::RTSP_TOKEN_MEDIA_FACTORY_ROLE.as_str(), "viewer")
                            .build();
                        let basic = rtsp::RTSPAuth::make_basic(&c.username, &c.password);
                        auth.add_basic(basic.as_str(), &token);
                        server.set_auth(Some(&auth));
                    }
                    server.attach(Some(&ctx)).map_err(|e| format!("cannot listen: {e}"))?;
                    let port = server.bound_port();
                    if let Ok(mut s) = slot.lock() {
                        *s = Some(server);
                    }
                    u16::try_from(port).map_err(|_| format!("bad port {port}"))
                });
                let ok = matches!(result, Ok(Ok(_)));
                let _ = ready_tx.send(result.unwrap_or_else(|e| Err(e.to_string())));
                if ok {
                    ml.run();
                }
            })
            .map_err(|e| e.to_string())?;
        let port = ready_rx.recv().map_err(|_| "RTSP server thread died".to_string())??;
        Ok(RtspServer { port, main_loop, context, server: shared, thread: Some(thread) })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `rtsp://127.0.0.1:PORT/path`.
    pub fn url(&self, path: &str) -> String {
        format!("rtsp://127.0.0.1:{}{path}", self.port)
    }

    /// Closes every client connection and stops listening.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(thread) = self.thread.take() else { return };
        let server = Arc::clone(&self.server);
        let ml = self.main_loop.clone();
        self.context.invoke(move || {
            if let Ok(mut slot) = server.lock()
                && let Some(s) = slot.take()
            {
                s.client_filter(Some(&mut |_, _| rtsp::RTSPFilterResult::Remove));
                if let Some(points) = s.mount_points() {
                    drop(points);
                }
            }
            ml.quit();
        });
        let _ = thread.join();
    }
}

impl Drop for RtspServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn factory(scene: Scene, encoded: Arc<Encoded>, credentials: Option<&Credentials>) -> rtsp::RTSPMediaFactory {
    let f = rtsp::RTSPMediaFactory::new();
    // Encoded once here, served from memory: the cameras cost the machine next to nothing.
    f.set_launch(
        "( appsrc name=src is-live=true format=time ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=1 )",
    );
    f.set_shared(true);
    if credentials.is_some() {
        f.add_role_from_structure(
            &gst::Structure::builder("viewer")
                .field(rtsp::RTSP_PERM_MEDIA_FACTORY_ACCESS.as_str(), true)
                .field(rtsp::RTSP_PERM_MEDIA_FACTORY_CONSTRUCT.as_str(), true)
                .build(),
        );
    }
    let scene = Arc::new(scene);
    f.connect_media_configure(move |_, media| {
        let Some(bin) = media.element().downcast::<gst::Bin>().ok() else { return };
        let Some(src) = bin.by_name_recurse_up("src").and_then(|e| e.downcast::<gst_app::AppSrc>().ok()) else {
            return;
        };
        src.set_caps(Some(&encoded.caps));
        let (scene, encoded) = (Arc::clone(&scene), Arc::clone(&encoded));
        let frame_ns = 1_000_000_000 / scene.fps.max(1) as u64;
        // (frame number, current segment, frame at which it began)
        let state = Mutex::new((0u64, usize::MAX, 0u64));
        src.set_callbacks(
            gst_app::AppSrcCallbacks::builder()
                .need_data(move |src, _| {
                    let Ok(mut st) = state.lock() else { return };
                    let (n, segment, began) = &mut *st;
                    let now = scene.segment_at(*n);
                    if now != *segment {
                        (*segment, *began) = (now, *n);
                    }
                    // Each segment starts at its keyframe and loops its GOP.
                    let chunk = &encoded.chunks[now];
                    let len = chunk.len() as u64;
                    let unit = &chunk[((*n - *began) % len) as usize];
                    // Decoded in stream order; shown `reorder` frames later, in the
                    // chunk's own order (B-frames after the frame they precede).
                    let shown = *began + (*n - *began) / len * len + unit.shown + encoded.reorder;
                    let mut buffer = unit.buffer.copy();
                    if let Some(b) = buffer.get_mut() {
                        b.set_pts(gst::ClockTime::from_nseconds(shown * frame_ns));
                        b.set_dts(gst::ClockTime::from_nseconds(*n * frame_ns));
                        b.set_duration(gst::ClockTime::from_nseconds(frame_ns));
                    }
                    *n += 1;
                    let _ = src.push_buffer(buffer);
                })
                .build(),
        );
    });
    f
}

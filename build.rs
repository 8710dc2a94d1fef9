//! Link-time facts about libtorch that cargo cannot express in Cargo.toml.
//!
//! torch-sys (our direct dependency, `links = "tch"`) tells us where libtorch's shared
//! libraries are through `DEP_TCH_LIBTORCH_LIB`. We use that to:
//! - put that directory in the binary's rpath, so `carwatch` runs without
//!   `LD_LIBRARY_PATH` on the machine that built it, and the place `make install`
//!   copies libtorch to, relative to the installed binary;
//! - link `libtorch_cuda.so` even though no symbol of ours refers to it. rustc passes
//!   `--as-needed` to the linker, which drops it, and libtorch then silently runs on CPU
//!   on a GPU host. Loading it needs no GPU: on a machine without one CUDA reports
//!   zero devices and carwatch falls back to CPU.
//!
//! It also compiles `src/model/cuda_streams.cpp`, the few CUDA stream and event calls
//! tch does not expose, against libtorch's headers (`<lib>/../include`).

use std::env;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib_dir) = env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=torch-sys did not report libtorch's directory: no rpath set");
        return;
    };
    println!("cargo:rerun-if-changed=src/model/cuda_streams.cpp");
    let include = Path::new(&lib_dir).parent().map(|torch| torch.join("include"));
    match include {
        Some(dir) if dir.join("c10/core/Event.h").exists() => cc::Build::new()
            .cpp(true)
            .file("src/model/cuda_streams.cpp")
            .include(&dir)
            .flag("-std=c++17")
            .warnings(false)
            .compile("carwatch_cuda_streams"),
        _ => panic!(
            "libtorch's C++ headers are not beside {lib_dir} (expected ../include/c10): reinstall torch in .venv"
        ),
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    // Where `make install` puts libtorch, relative to the installed binary
    // (PREFIX/bin/carwatch -> PREFIX/lib/carwatch/site-packages/torch/lib).
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../lib/carwatch/site-packages/torch/lib");
    if Path::new(&lib_dir).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}

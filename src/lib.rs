//! carwatch watches camera feeds for wanted vehicles.
//!
//! A tour, in the order data flows:
//!
//! - [`config`] reads `carwatch.toml` into typed sections, reporting every problem with
//!   file:line:column.
//! - [`model`] is recognition: [`model::preprocess`] (crop, resize, ImageNet
//!   normalisation), [`model::backbone`] (VGG-19's frozen convolutions, CPU or CUDA),
//!   [`model::cascade`] (small heads for view -> make -> model, with marginals), all
//!   loaded through [`model::Recognizer`].
//! - [`train`] builds a cascade from a folder of labelled photos, computing backbone
//!   features once and caching them.
//! - [`input`] reads an image the operator names (file or http(s) URL) for `classify`.
//! - [`synthetic`] draws generated vehicles and random backbones: the test data and the
//!   demo model, since no real weights or photos can be shipped.
//!
//! The binary (`main.rs`, `cli.rs`) is thin: it parses arguments, sets up logging and
//! calls into this library, so tests and benchmarks run the same code.

#![forbid(clippy::print_stdout)]

pub mod config;
pub mod input;
pub mod model;
pub mod synthetic;
pub mod train;

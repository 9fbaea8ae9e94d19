//! Loads a kiln artifact once and classifies images with it.
//!
//! The public surface is [`Model`]: [`Model::load`] verifies and compiles an artifact, [`Model::prepare`]
//! turns one input string (base64 or raw image bytes: JPEG, PNG, WebP, GIF, BMP, TIFF) into the graph's
//! input image, [`Model::infer`] runs a batch of prepared images, and [`Model::predict`] does both for a batch of
//! strings, giving each instance its own result; [`run_on`] runs work on a tract executor the way `Model` runs an image
//! (the profiler's way in). [`nnef`] is the graph reader and writer every kiln graph
//! goes through: tract's, plus kiln's operations ([`Attention`]; [`LinearI8`] in int8 graphs;
//! [`LinearBf16`] and [`AttentionBf16`] in bf16 graphs; [`QuantizeRows`] in format version 1 int8 graphs).
//!
//! Every run allocates its activations afresh (megabytes per layer at batch 8). Programs embedding this
//! crate should run on jemalloc, as the `kiln` binary does: glibc's allocator gives such buffers back to
//! the kernel after each run and faults them in again on the next (a tenth of a ViT-B batch-8 run here).

#![deny(missing_docs)]

#[cfg(target_arch = "x86_64")]
mod amx;
mod attention;
mod executor;
mod image;
mod layer_norm;
mod linear_bf16;
mod linear_f32;
mod linear_fusion;
mod linear_i8;
mod model;
mod nnef;
mod packed_linear;
mod pixels;
mod progress;
mod quantize;

pub use self::attention::{Attention, AttentionBf16};
pub use self::executor::run_on;
pub use self::image::{ImageLimits, InstanceError, PreparedImage, prepare};
pub use self::linear_bf16::LinearBf16;
pub use self::linear_i8::LinearI8;
pub use self::model::{Model, Prediction, RuntimeError, RuntimeOptions, optimize};
pub use self::nnef::nnef;
pub use self::progress::{NoProgress, Progress};
pub use self::quantize::QuantizeRows;

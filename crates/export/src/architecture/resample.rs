//! `torch.nn.functional.interpolate` on parameter tables, done at export time so a graph built for another
//! input size than the checkpoint's carries the constants PyTorch computes on the fly.
//!
//! Both modes follow PyTorch 2's CPU kernels for `f32` (`UpSampleKernel.cpp`, `align_corners=False`, output
//! `size` given, no antialiasing) bit for bit on x86-64: the source coordinate `scale * (dst + 0.5) - 0.5`
//! with `scale = in / out`, the index guard, the weights, and the order of every sum, including where GCC
//! fuses a multiply and an add (`mul_add` below) in PyTorch's build. Tables are channels-last,
//! `[rows, cols, channels]` row-major, as checkpoints store them.

/// A table's spatial size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    /// Rows (PyTorch's height).
    pub rows: usize,
    /// Columns (PyTorch's width).
    pub cols: usize,
}

/// PyTorch's bicubic convolution constant.
const CUBIC_A: f32 = -0.75;

/// Channels the channels-last bilinear kernel computes as one SIMD vector (`Vectorized<float>` on AVX2);
/// the remaining `channels % LANES` go through its scalar loop, which sums in another order.
const LANES: usize = 8;

/// `interpolate(mode="bicubic", align_corners=False)`: PyTorch's generic kernel, 4x4 taps, borders
/// clamped; each output is `sum_i w_i * (sum_j w_j * x[row_i, col_j])`.
pub fn bicubic(values: &[f32], channels: usize, from: Grid, to: Grid) -> Vec<f32> {
    let rows = cubic_taps(from.rows, to.rows);
    let cols = cubic_taps(from.cols, to.cols);
    let mut out = Vec::with_capacity(to.rows * to.cols * channels);
    for row_taps in &rows {
        for col_taps in &cols {
            for c in 0..channels {
                let along_row = |r: usize| {
                    let terms = col_taps.map(|(k, w)| (values[(r * from.cols + k) * channels + c], w));
                    weighted_sum(terms)
                };
                out.push(weighted_sum(row_taps.map(|(r, w)| (along_row(r), w))));
            }
        }
    }
    out
}

/// `interpolate(mode="bilinear", align_corners=False)` on a channels-last table: PyTorch's
/// `upsample_linear_channels_last`, which weighs the four neighbours by products of the row and column
/// fractions (an identity where a side keeps its size).
pub fn bilinear(values: &[f32], channels: usize, from: Grid, to: Grid) -> Vec<f32> {
    let rows = linear_taps(from.rows, to.rows);
    let cols = linear_taps(from.cols, to.cols);
    let vectorized = channels - channels % LANES;
    let mut out = Vec::with_capacity(to.rows * to.cols * channels);
    for &[(r0, h0), (r1, h1)] in &rows {
        for &[(k0, w0), (k1, w1)] in &cols {
            let weights = [h0 * w0, h0 * w1, h1 * w0, h1 * w1];
            for c in 0..channels {
                let at = |r: usize, k: usize| values[(r * from.cols + k) * channels + c];
                let x = [at(r0, k0), at(r0, k1), at(r1, k0), at(r1, k1)];
                out.push(if c < vectorized {
                    // `x00 * w00 + (x01 * w01 + (x10 * w10 + x11 * w11))`, fused.
                    x[0].mul_add(
                        weights[0],
                        x[1].mul_add(weights[1], x[3].mul_add(weights[3], x[2] * weights[2])),
                    )
                } else {
                    weighted_sum(std::array::from_fn(|i| (x[i], weights[i])))
                });
            }
        }
    }
    out
}

/// `t0 * w0 + t1 * w1 + ...` left to right as GCC compiles it for PyTorch: the first two products fused
/// into one `fma(t0, w0, t1 * w1)`, each further term fused into the running sum.
fn weighted_sum(terms: [(f32, f32); 4]) -> f32 {
    let [(t0, w0), (t1, w1), (t2, w2), (t3, w3)] = terms;
    t3.mul_add(w3, t2.mul_add(w2, t0.mul_add(w0, t1 * w1)))
}

/// `area_pixel_compute_source_index` for `align_corners=False` with the scale `in / out`.
fn source_index(input: usize, output: usize, dst: usize) -> f32 {
    let scale = input as f32 / output as f32;
    scale.mul_add(dst as f32 + 0.5, -0.5)
}

/// `guard_index_and_lambda`: the tap left of `real` (at most the last index) and the fraction past it.
fn guard(real: f32, input: usize) -> (i64, f32) {
    let index = (real.floor() as i64).min(input as i64 - 1);
    (index, (real - index as f32).clamp(0.0, 1.0))
}

/// Each output position's four source indices (clamped to the table) and weights.
fn cubic_taps(input: usize, output: usize) -> Vec<[(usize, f32); 4]> {
    let clamp = |i: i64| i.clamp(0, input as i64 - 1) as usize;
    (0..output)
        .map(|dst| {
            let (index, t) = guard(source_index(input, output, dst), input);
            let weights = cubic_weights(t);
            std::array::from_fn(|j| (clamp(index + j as i64 - 1), weights[j]))
        })
        .collect()
}

/// `get_cubic_upsample_coefficients`, fused as in PyTorch's build.
fn cubic_weights(t: f32) -> [f32; 4] {
    let a = CUBIC_A;
    let near = |x: f32| ((a + 2.0).mul_add(x, -(a + 3.0)) * x) * x + 1.0;
    let far = |x: f32| a.mul_add(x, -(5.0 * a)).mul_add(x, 8.0 * a) * x - 4.0 * a;
    let opposite = 1.0 - t;
    [far(t + 1.0), near(t), near(opposite), far(opposite + 1.0)]
}

/// `compute_source_index_and_lambda`: each output position's two source indices and weights.
fn linear_taps(input: usize, output: usize) -> Vec<[(usize, f32); 2]> {
    (0..output)
        .map(|dst| {
            if input == output {
                return [(dst, 1.0), (dst, 0.0)];
            }
            let (index, lambda) = guard(source_index(input, output, dst).max(0.0), input);
            let next = if index < input as i64 - 1 { index + 1 } else { index };
            [(index as usize, 1.0 - lambda), (next as usize, lambda)]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Deserialize)]
    struct Case {
        mode: String,
        channels: usize,
        from: [usize; 2],
        to: [usize; 2],
        output: Vec<f32>,
    }

    #[derive(Deserialize)]
    struct Document {
        cases: Vec<Case>,
    }

    /// `table()` of `testdata/generate.py`.
    fn table(len: usize) -> Vec<f32> {
        (0..len).map(|i| ((i * 37) % 256) as f32 / 64.0 - 2.0).collect()
    }

    /// Every case `testdata/generate.py` recorded from PyTorch comes out bit for bit.
    #[test]
    fn interpolation_matches_pytorch_bit_for_bit() -> Result<(), Box<dyn std::error::Error>> {
        let document: Document = serde_json::from_str(include_str!("testdata/resample.json"))?;
        for case in document.cases {
            let from = Grid { rows: case.from[0], cols: case.from[1] };
            let to = Grid { rows: case.to[0], cols: case.to[1] };
            let values = table(from.rows * from.cols * case.channels);
            let got = match case.mode.as_str() {
                "bicubic" => bicubic(&values, case.channels, from, to),
                "bilinear" => bilinear(&values, case.channels, from, to),
                other => return Err(format!("unknown mode {other}").into()),
            };
            let differing = got.iter().zip(&case.output).filter(|(g, w)| g.to_bits() != w.to_bits()).count();
            assert_eq!(got.len(), case.output.len(), "{} {from:?} -> {to:?}", case.mode);
            assert_eq!(differing, 0, "{} x{} {from:?} -> {to:?}: values differ", case.mode, case.channels);
        }
        Ok(())
    }
}

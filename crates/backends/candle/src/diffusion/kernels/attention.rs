//! Multi-head attention in the manner of FlashAttention: for a block of query rows, the keys are
//! visited a block at a time with a running maximum and sum per row (an online softmax), so the
//! scores never exist beyond one (query block, key block) tile that stays in cache.
//!
//! At 512x512, tiny-sd's UNet attends over 16,384 tokens and its VAE over 65,536; materialised,
//! one head's scores take 1 GiB and 16 GiB, and zeroing and re-reading them cost more than the
//! arithmetic. Here each task owns a block of query rows of one head, reads q, k and v in place
//! in their (batch, tokens, heads * head_dim) layout and writes its rows of the output, so the
//! heads are never split into copies either.

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape};
use rayon::prelude::*;

use super::math::{exp, sum, vectorised};
use super::{values, Out, PARALLEL_MIN};

/// Query rows of one task (a multiple of [`ROWS`]).
const QUERY_BLOCK: usize = 64;
/// Keys per tile (a multiple of [`LANES`]): a (64, 256) tile of scores is 64 KiB, within a
/// core's L2 beside the block's packed keys and values.
const KEY_BLOCK: usize = 256;
/// Rows of the portable register tile of both products.
const ROWS: usize = 4;
/// Query rows are padded to a multiple of every form's tile rows (8 in AVX-512's).
const ROW_PAD: usize = 8;
/// Keys are padded to a multiple of every form's tile columns (32 in AVX-512's).
const KEY_PAD: usize = 32;
/// Columns of the register tile: two AVX2 vectors, so 4 x 16 accumulators fill eight of the 16
/// registers, enough independent sums to keep both FMA units busy.
const LANES: usize = 16;

/// `softmax(q k^T * scale) v` per head over q (batch, n, heads * d), k and v (batch, s, heads *
/// d); the output is (batch, n, heads * d), heads side by side as the output projection reads
/// them.
pub(super) struct FlashAttention {
    pub heads: usize,
    pub scale: f32,
    pub kernels: Kernels,
}

/// Sizes of one call.
#[derive(Clone, Copy)]
struct Dims {
    n: usize,
    s: usize,
    heads: usize,
    d: usize,
}

impl Dims {
    /// Values in one token's row of q, k, v and the output.
    fn row(&self) -> usize {
        self.heads * self.d
    }

    /// The head size rounded up to whole register tiles.
    fn padded(&self) -> usize {
        self.d.div_ceil(LANES) * LANES
    }

    /// The key count rounded up to whole register tiles.
    fn padded_keys(&self) -> usize {
        self.s.div_ceil(KEY_PAD) * KEY_PAD
    }
}

/// Scratch of one task, reused from task to task on a thread: the packed query rows, the tile of
/// scores, the output rows being summed, and each row's running maximum and sum.
struct Tile {
    /// (QUERY_BLOCK, d): the block's query rows times the scale, zero past the last row.
    q: Vec<f32>,
    /// (QUERY_BLOCK, KEY_BLOCK).
    scores: Vec<f32>,
    /// (QUERY_BLOCK, padded d).
    acc: Vec<f32>,
    max: Vec<f32>,
    total: Vec<f32>,
}

impl Tile {
    fn new(dims: Dims) -> Self {
        let (d, dp) = (dims.d, dims.padded());
        Self {
            q: vec![0.0; QUERY_BLOCK * d],
            scores: vec![0.0; QUERY_BLOCK * KEY_BLOCK],
            acc: vec![0.0; QUERY_BLOCK * dp],
            max: vec![0.0; QUERY_BLOCK],
            total: vec![0.0; QUERY_BLOCK],
        }
    }
}

vectorised! {
    /// `scores (rows, kp) = q (rows, d) @ kt (d, kp)`; rows is a multiple of ROWS, kp of
    /// LANES.
    fn scores_tile(q: &[f32], kt: &[f32], scores: &mut [f32], d: usize, kp: usize) {
        for (qr, sr) in q.chunks_exact(ROWS * d).zip(scores.chunks_exact_mut(ROWS * kp)) {
            for j in (0..kp).step_by(LANES) {
                let mut acc = [[0f32; LANES]; ROWS];
                for c in 0..d {
                    let k: &[f32; LANES] = kt[c * kp + j..][..LANES].try_into().unwrap_or(&[0.0; LANES]);
                    for (i, a) in acc.iter_mut().enumerate() {
                        let x = qr[i * d + c];
                        for l in 0..LANES {
                            a[l] = x.mul_add(k[l], a[l]);
                        }
                    }
                }
                for (i, a) in acc.iter().enumerate() {
                    sr[i * kp + j..][..LANES].copy_from_slice(a);
                }
            }
        }
    }
}

vectorised! {
    /// `acc (rows, dp) += p (rows, kp)[.., ..keys] @ v (keys, dp)`; rows is a multiple of
    /// ROWS, dp of LANES.
    fn weighted_sum(p: &[f32], v: &[f32], acc: &mut [f32], keys: usize, kp: usize, dp: usize) {
        for (pr, ar) in p.chunks_exact(ROWS * kp).zip(acc.chunks_exact_mut(ROWS * dp)) {
            for c in (0..dp).step_by(LANES) {
                let mut sum = [[0f32; LANES]; ROWS];
                for (i, s) in sum.iter_mut().enumerate() {
                    s.copy_from_slice(&ar[i * dp + c..][..LANES]);
                }
                for j in 0..keys {
                    let vv: &[f32; LANES] = v[j * dp + c..][..LANES].try_into().unwrap_or(&[0.0; LANES]);
                    for (i, s) in sum.iter_mut().enumerate() {
                        let w = pr[i * kp + j];
                        for l in 0..LANES {
                            s[l] = w.mul_add(vv[l], s[l]);
                        }
                    }
                }
                for (i, s) in sum.iter().enumerate() {
                    ar[i * dp + c..][..LANES].copy_from_slice(s);
                }
            }
        }
    }
}

vectorised! {
    /// The largest value of `x`.
    fn row_max(x: &[f32]) -> f32 {
        let mut lanes = [f32::NEG_INFINITY; 8];
        let chunks = x.chunks_exact(8);
        let mut max = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        for c in chunks {
            for (l, &v) in lanes.iter_mut().zip(c) {
                *l = if v > *l { v } else { *l };
            }
        }
        for l in lanes {
            max = max.max(l);
        }
        max
    }
}

vectorised! {
    /// `x = e^(x - shift)`, returning the sum of the new values.
    fn exp_shifted(x: &mut [f32], shift: f32) -> f32 {
        for v in x.iter_mut() {
            *v = exp(*v - shift);
        }
        sum(x)
    }
}

vectorised! {
    /// `x *= factor`.
    fn scaled(x: &mut [f32], factor: f32) {
        for v in x.iter_mut() {
            *v *= factor;
        }
    }
}

/// `weighted_sum`'s signature.
type WeightedSum = fn(&[f32], &[f32], &mut [f32], usize, usize, usize);

/// The four kernels of one form: the portable one, or AVX-512's where the CPU has it.
#[derive(Clone, Copy)]
pub(super) struct Kernels {
    pub scores_tile: fn(&[f32], &[f32], &mut [f32], usize, usize),
    pub weighted_sum: WeightedSum,
    pub row_max: fn(&[f32]) -> f32,
    pub exp_shifted: fn(&mut [f32], f32) -> f32,
}

impl Kernels {
    /// The forms above, compiled for AVX2 where the CPU has it.
    pub(super) const PORTABLE: Kernels = Kernels {
        scores_tile,
        weighted_sum,
        row_max,
        exp_shifted,
    };

    /// The fastest forms this CPU runs.
    pub(super) fn best() -> Kernels {
        #[cfg(target_arch = "x86_64")]
        if let Some(kernels) = super::avx512::kernels() {
            return kernels;
        }
        Self::PORTABLE
    }
}

/// Keys and values of every head, packed once for all the query blocks that read them.
struct Packed {
    /// Per (image, head), (d, padded s) in key blocks: block `start` is (d, kp) at `start * d`,
    /// zero past the last key, so the score tile reads whole vectors of keys.
    kt: Vec<f32>,
    /// Per (image, head), (s, padded d): zero past d, so the weighted sum reads whole vectors.
    v: Vec<f32>,
}

impl Packed {
    fn new(dims: Dims, batch: usize, k: &[f32], v: &[f32]) -> Self {
        let Dims { s, d, heads, .. } = dims;
        let (row, dp, sp) = (dims.row(), dims.padded(), dims.padded_keys());
        let mut kt = vec![0f32; batch * heads * d * sp];
        let mut vp = vec![0f32; batch * heads * s * dp];
        let pack = |(bh, (kt, vp)): (usize, (&mut [f32], &mut [f32]))| {
            let (b, h) = (bh / heads, bh % heads);
            for start in (0..s).step_by(KEY_BLOCK) {
                let keys = KEY_BLOCK.min(s - start);
                let kp = keys.div_ceil(KEY_PAD) * KEY_PAD;
                let block = &mut kt[start * d..][..d * kp];
                for j in 0..keys {
                    let at = (b * s + start + j) * row + h * d;
                    for (c, &x) in k[at..][..d].iter().enumerate() {
                        block[c * kp + j] = x;
                    }
                }
            }
            for (j, dst) in vp.chunks_exact_mut(dp).enumerate() {
                dst[..d].copy_from_slice(&v[(b * s + j) * row + h * d..][..d]);
            }
        };
        kt.par_chunks_mut(d * sp)
            .zip(vp.par_chunks_mut(s * dp))
            .enumerate()
            .for_each(pack);
        Self { kt, v: vp }
    }
}

impl FlashAttention {
    /// Rows `rows` (at most QUERY_BLOCK) of head `h` of image `b`, written into `out`.
    ///
    /// # Safety
    /// `out` must hold the output `dims` describes, and no other task may write these rows of
    /// this head.
    unsafe fn block(
        &self,
        dims: Dims,
        (b, h): (usize, usize),
        rows: std::ops::Range<usize>,
        (q, packed): (&[f32], &Packed),
        out: Out,
        tile: &mut Tile,
    ) {
        let Dims { n, s, d, heads } = dims;
        let (row, dp) = (dims.row(), dims.padded());
        let bh = b * heads + h;
        let kt_head = &packed.kt[bh * d * dims.padded_keys()..];
        let v_head = &packed.v[bh * s * dp..];
        let m = rows.len();
        let mp = m.div_ceil(ROW_PAD) * ROW_PAD;
        // Padding rows are zero: their scores are zeros, harmless, and never written out.
        let packed_q = &mut tile.q[..mp * d];
        packed_q[m * d..].fill(0.0);
        for (r, dst) in packed_q.chunks_exact_mut(d).take(m).enumerate() {
            let src = &q[(b * n + rows.start + r) * row + h * d..][..d];
            for (x, &y) in dst.iter_mut().zip(src) {
                *x = y * self.scale;
            }
        }
        let acc = &mut tile.acc[..mp * dp];
        acc.fill(0.0);
        tile.max[..mp].fill(f32::NEG_INFINITY);
        tile.total[..mp].fill(0.0);
        for start in (0..s).step_by(KEY_BLOCK) {
            let keys = KEY_BLOCK.min(s - start);
            let kp = keys.div_ceil(KEY_PAD) * KEY_PAD;
            let kt = &kt_head[start * d..][..d * kp];
            let vp = &v_head[start * dp..][..keys * dp];
            let scores = &mut tile.scores[..mp * kp];
            (self.kernels.scores_tile)(&tile.q[..mp * d], kt, scores, d, kp);
            for (r, line) in scores.chunks_exact_mut(kp).enumerate() {
                let line = &mut line[..keys];
                let seen = tile.max[r];
                let max = seen.max((self.kernels.row_max)(line));
                if max == f32::NEG_INFINITY {
                    // Every score so far is -inf: nothing to weigh yet.
                    line.fill(0.0);
                    continue;
                }
                let correction = exp(seen - max);
                tile.total[r] = tile.total[r] * correction + (self.kernels.exp_shifted)(line, max);
                if correction != 1.0 {
                    scaled(&mut acc[r * dp..][..dp], correction);
                }
                tile.max[r] = max;
            }
            (self.kernels.weighted_sum)(scores, vp, acc, keys, kp, dp);
        }
        for (r, values) in acc.chunks_exact(dp).take(m).enumerate() {
            let inv = 1.0 / tile.total[r];
            let dst = out.at((b * n + rows.start + r) * row + h * d);
            for (c, &value) in values[..d].iter().enumerate() {
                // SAFETY: row r of this block, head h: this task's alone (the caller's contract).
                *dst.add(c) = value * inv;
            }
        }
    }
}

impl CustomOp3 for FlashAttention {
    fn name(&self) -> &'static str {
        "ferroserve-flash-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (q, k, v) = (
            values("attention", s1, l1)?,
            values("attention", s2, l2)?,
            values("attention", s3, l3)?,
        );
        let (batch, n, width) = l1.shape().dims3()?;
        let (kb, s, kw) = l2.shape().dims3()?;
        if (kb, s, kw) != l3.shape().dims3()? || kb != batch || kw != width {
            bail!(
                "attention: q {:?}, k {:?} and v {:?} do not fit",
                l1.shape(),
                l2.shape(),
                l3.shape()
            )
        }
        if self.heads == 0 || width % self.heads != 0 || s == 0 {
            bail!(
                "attention: {width} channels do not split into {} heads over {s} keys",
                self.heads
            )
        }
        let dims = Dims {
            n,
            s,
            heads: self.heads,
            d: width / self.heads,
        };
        let packed = Packed::new(dims, batch, k, v);
        let mut out = vec![0f32; batch * n * width];
        let dst = Out(out.as_mut_ptr());
        let blocks = n.div_ceil(QUERY_BLOCK);
        let task = |tile: &mut Tile, t: usize| {
            let (bh, block) = (t / blocks, t % blocks);
            let rows = block * QUERY_BLOCK..((block + 1) * QUERY_BLOCK).min(n);
            // SAFETY: the shapes were checked above; task t alone writes these rows of head
            // bh % heads of image bh / heads.
            unsafe {
                self.block(
                    dims,
                    (bh / self.heads, bh % self.heads),
                    rows,
                    (q, &packed),
                    dst,
                    tile,
                )
            }
        };
        let tasks = batch * self.heads * blocks;
        if batch * n * s * dims.d >= PARALLEL_MIN && tasks > 1 {
            (0..tasks)
                .into_par_iter()
                .for_each_init(|| Tile::new(dims), task);
        } else {
            let mut tile = Tile::new(dims);
            (0..tasks).for_each(|t| task(&mut tile, t));
        }
        Ok((CpuStorage::F32(out), Shape::from((batch, n, width))))
    }
}

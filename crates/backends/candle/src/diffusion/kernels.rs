//! CPU kernels for the diffusion models' hot operations, as candle custom ops.
//!
//! candle's CPU convolution builds its im2col patches one strided element at a time and its
//! softmax, SiLU and GELU call the scalar `expf`/`erff` for every value; on a UNet step those
//! dominate (a 3x3 convolution ran at a third of the speed of the matrix product it amounts to).
//! Here a convolution is im2col with whole-row copies into a bounded tile, then one `gemm` per
//! tile with the bias already in the output; the element-wise kernels use a polynomial `exp`
//! that the compiler vectorises (with AVX2 and FMA where the CPU has them, chosen at run time).
//!
//! Every function falls back to candle's own operations ([`generic`]) on other devices (CUDA),
//! so the models call these unconditionally; the tests check each kernel against its fallback.

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Work below this many values runs on the calling thread: handing it to the pool costs more.
const PARALLEL_MIN: usize = 1 << 14;
/// im2col tile size in values (1 MiB of f32), so large images never need a full patch matrix.
const TILE_VALUES: usize = 1 << 18;

/// Threads of the pool the kernels and candle's matrix products share.
fn threads() -> usize {
    rayon::current_num_threads().max(1)
}

thread_local! {
    /// Each thread's im2col tile, kept between convolutions: every value of it is overwritten
    /// before use, so it only grows.
    static PATCHES: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// 2-D convolution with bias, dilation 1: `x` (batch, c_in, h, w), `weight` (c_out, c_in, kh, kw),
/// `bias` (c_out).
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op3_no_bwd(
            &weight.contiguous()?,
            &bias.contiguous()?,
            &Conv2d { stride, padding },
        )
    } else {
        generic::conv2d(x, weight, bias, stride, padding)
    }
}

/// Group normalisation of `x` (batch, channels, ...) with a per-channel affine transform, and
/// SiLU after it when `silu` is set (the pair that opens every ResNet block).
pub fn group_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        return x.contiguous()?.apply_op3_no_bwd(
            &gamma.contiguous()?,
            &beta.contiguous()?,
            &GroupNorm {
                groups,
                eps: eps as f32,
                silu,
            },
        );
    }
    generic::group_norm(x, gamma, beta, groups, eps, silu)
}

/// `softmax(scale * x)` over the last dimension.
pub fn softmax_last_dim(x: &Tensor, scale: f64) -> Result<Tensor> {
    if scale.is_nan() || scale < 0.0 {
        // The kernel scales the row's maximum, which is the scaled row's only for scale >= 0.
        return softmax_last_dim(&(x * scale)?, 1.0);
    }
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1_no_bwd(&Softmax {
            scale: scale as f32,
        })
    } else {
        generic::softmax_last_dim(x, scale)
    }
}

/// GEGLU's gate: the last dimension's first half times the exact (erf) GELU of its second half.
pub fn geglu(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1_no_bwd(&Geglu)
    } else {
        generic::geglu(x)
    }
}

/// The same operations from candle's own, for other devices (and to check the kernels against).
mod generic {
    use candle_core::{Result, Tensor, D};

    pub fn conv2d(
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        stride: usize,
        padding: usize,
    ) -> Result<Tensor> {
        let c_out = weight.dim(0)?;
        x.conv2d(weight, padding, stride, 1, 1)?
            .broadcast_add(&bias.reshape((1, c_out, 1, 1))?)
    }

    pub fn group_norm(
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        groups: usize,
        eps: f64,
        silu: bool,
    ) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let (b, c) = (dims[0], dims[1]);
        let xs = x.reshape((b, groups, ()))?;
        let centred = xs.broadcast_sub(&xs.mean_keepdim(2)?)?;
        let var = centred.sqr()?.mean_keepdim(2)?;
        let normed = centred
            .broadcast_div(&(var + eps)?.sqrt()?)?
            .reshape(dims.as_slice())?;
        let mut affine = vec![1; dims.len()];
        affine[1] = c;
        let y = normed
            .broadcast_mul(&gamma.reshape(affine.as_slice())?)?
            .broadcast_add(&beta.reshape(affine.as_slice())?)?;
        if silu {
            candle_nn::ops::silu(&y)
        } else {
            Ok(y)
        }
    }

    pub fn softmax_last_dim(x: &Tensor, scale: f64) -> Result<Tensor> {
        candle_nn::ops::softmax_last_dim(&(x * scale)?)
    }

    pub fn geglu(x: &Tensor) -> Result<Tensor> {
        let halves = x.chunk(2, D::Minus1)?;
        &halves[0] * halves[1].gelu_erf()?
    }
}

/// The contiguous f32 values of a storage, or an error naming the operation.
fn values<'a>(op: &str, s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!("{op}: input must be contiguous")
    };
    match s {
        CpuStorage::F32(v) => Ok(&v[start..end]),
        _ => bail!("{op}: only f32 is supported"),
    }
}

/// A raw output pointer shared by tasks that write disjoint parts of one buffer.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: every task writes a region no other task touches (see the callers).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The pointer (a method, so closures capture the whole `Send` wrapper, not its field).
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

struct Conv2d {
    stride: usize,
    padding: usize,
}

/// Sizes of one convolution, in candle's NCHW layout.
#[derive(Clone, Copy)]
struct ConvShape {
    c_in: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    stride: usize,
    padding: usize,
}

impl ConvShape {
    /// Rows of the patch matrix: one per input channel and kernel position.
    fn k(&self) -> usize {
        self.c_in * self.kh * self.kw
    }

    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.padding == 0
    }

    /// Writes the patch matrix for output rows `rows` of one image: (k, rows.len() * ow), zero
    /// where the kernel reaches into the padding.
    fn im2col(&self, image: &[f32], rows: std::ops::Range<usize>, col: &mut [f32]) {
        let (s, p) = (self.stride, self.padding);
        let n = rows.len() * self.ow;
        for ci in 0..self.c_in {
            let plane = &image[ci * self.h * self.w..][..self.h * self.w];
            for i in 0..self.kh {
                for j in 0..self.kw {
                    let row = &mut col[((ci * self.kh + i) * self.kw + j) * n..][..n];
                    for (r, oy) in rows.clone().enumerate() {
                        let dst = &mut row[r * self.ow..][..self.ow];
                        let y = (oy * s + i) as isize - p as isize;
                        if y < 0 || y >= self.h as isize {
                            dst.fill(0.0);
                            continue;
                        }
                        let src = &plane[y as usize * self.w..][..self.w];
                        if s == 1 {
                            // Output column ox reads input column ox + j - p.
                            let lo = p.saturating_sub(j).min(self.ow);
                            let hi = (self.w + p).saturating_sub(j).clamp(lo, self.ow);
                            dst[..lo].fill(0.0);
                            if hi > lo {
                                // lo was not cut to ow here, so lo + j >= p.
                                dst[lo..hi].copy_from_slice(&src[lo + j - p..hi + j - p]);
                            }
                            dst[hi..].fill(0.0);
                        } else {
                            for (ox, d) in dst.iter_mut().enumerate() {
                                let x = (ox * s + j) as isize - p as isize;
                                *d = if x >= 0 && x < self.w as isize {
                                    src[x as usize]
                                } else {
                                    0.0
                                };
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `dst (m, n) += lhs (m, k) @ rhs (k, n)`, all row-major with the given row strides.
///
/// # Safety
/// The pointers must cover the matrices their sizes and strides describe, and no other thread
/// may write `dst`'s elements meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_acc(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    lhs: *const f32,
    lhs_rs: usize,
    rhs: *const f32,
    rhs_rs: usize,
    threads: usize,
) {
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        true,
        lhs,
        1,
        lhs_rs as isize,
        rhs,
        1,
        rhs_rs as isize,
        1.0,
        1.0,
        false,
        false,
        false,
        parallelism,
    )
}

impl CustomOp3 for Conv2d {
    fn name(&self) -> &'static str {
        "ferroserve-conv2d"
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
        let (x, w, bias) = (
            values("conv2d", s1, l1)?,
            values("conv2d", s2, l2)?,
            values("conv2d", s3, l3)?,
        );
        let (batch, c_in, h, wd) = l1.shape().dims4()?;
        let (c_out, c_in_w, kh, kw) = l2.shape().dims4()?;
        if c_in != c_in_w || bias.len() != c_out {
            bail!(
                "conv2d: input {:?}, weight {:?} and bias {:?} do not fit",
                l1.shape(),
                l2.shape(),
                l3.shape()
            )
        }
        let (s, p) = (self.stride, self.padding);
        if s == 0 || h + 2 * p < kh || wd + 2 * p < kw {
            bail!("conv2d: kernel {kh}x{kw} does not fit input {h}x{wd} with padding {p}")
        }
        let c = ConvShape {
            c_in,
            h,
            w: wd,
            kh,
            kw,
            oh: (h + 2 * p - kh) / s + 1,
            ow: (wd + 2 * p - kw) / s + 1,
            stride: s,
            padding: p,
        };
        let plane = c.oh * c.ow;
        let mut out = Vec::with_capacity(batch * c_out * plane);
        for _ in 0..batch {
            for &b in bias {
                out.extend(std::iter::repeat_n(b, plane));
            }
        }
        let dst = Out(out.as_mut_ptr());
        let threads = threads();
        if c.pointwise() {
            for b in 0..batch {
                // SAFETY: image b's output block (c_out, plane) and input block (c_in, plane)
                // lie inside `out` and `x`; nothing else writes the block.
                unsafe {
                    gemm_acc(
                        (c_out, plane, c_in),
                        dst.at(b * c_out * plane),
                        plane,
                        w.as_ptr(),
                        c_in,
                        x.as_ptr().add(b * c_in * h * wd),
                        plane,
                        threads,
                    )
                }
            }
        } else {
            let k = c.k();
            let rows_per_tile = (TILE_VALUES / (k * c.ow).max(1)).clamp(1, c.oh);
            let tiles_per_image = c.oh.div_ceil(rows_per_tile);
            let tasks = batch * tiles_per_image;
            // Either tiles run side by side with a single-threaded gemm each, or one after the
            // other with a parallel gemm: never both, so the pool is not oversubscribed.
            let side_by_side = threads > 1 && tasks >= threads;
            let run = |task: usize, gemm_threads: usize| {
                let (b, tile) = (task / tiles_per_image, task % tiles_per_image);
                let rows = tile * rows_per_tile..((tile + 1) * rows_per_tile).min(c.oh);
                let n = rows.len() * c.ow;
                // Taken out rather than borrowed: a parallel gemm may run another convolution
                // on this thread while it waits, and that one must find the slot free.
                let mut col = PATCHES.take();
                if col.len() < k * n {
                    col.resize(k * n, 0.0);
                }
                c.im2col(
                    &x[b * c_in * h * wd..][..c_in * h * wd],
                    rows.clone(),
                    &mut col[..k * n],
                );
                // SAFETY: this task's output columns (rows of image b) are written by no other
                // task; `col` holds (k, n) values and `w` (c_out, k).
                unsafe {
                    gemm_acc(
                        (c_out, n, k),
                        dst.at(b * c_out * plane + rows.start * c.ow),
                        plane,
                        w.as_ptr(),
                        k,
                        col.as_ptr(),
                        n,
                        gemm_threads,
                    )
                }
                // A tile larger than the usual bound (one very wide row) is not kept.
                if col.capacity() <= 4 * TILE_VALUES {
                    PATCHES.set(col);
                }
            };
            if side_by_side {
                (0..tasks).into_par_iter().for_each(|task| run(task, 1));
            } else {
                for task in 0..tasks {
                    run(task, threads);
                }
            }
        }
        Ok((
            CpuStorage::F32(out),
            Shape::from((batch, c_out, c.oh, c.ow)),
        ))
    }
}

struct GroupNorm {
    groups: usize,
    eps: f32,
    silu: bool,
}

impl CustomOp3 for GroupNorm {
    fn name(&self) -> &'static str {
        "ferroserve-group-norm"
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
        let x = values("group_norm", s1, l1)?;
        let (gamma, beta) = (values("group_norm", s2, l2)?, values("group_norm", s3, l3)?);
        let dims = l1.shape().dims();
        if dims.len() < 2 {
            bail!(
                "group_norm: input {:?} has no channel dimension",
                l1.shape()
            )
        }
        let (batch, c) = (dims[0], dims[1]);
        let g = self.groups;
        if g == 0 || c % g != 0 || gamma.len() != c || beta.len() != c {
            bail!(
                "group_norm: {c} channels, {g} groups and {} weights do not fit",
                gamma.len()
            )
        }
        let spatial: usize = dims[2..].iter().product();
        let per_group = c / g * spatial;
        let mut out = vec![0f32; x.len()];
        let norm = |(task, dst): (usize, &mut [f32])| {
            let group = task % g;
            let src = &x[task * per_group..][..per_group];
            let (mean, var) = mean_var(src);
            let rstd = 1.0 / (var + self.eps).sqrt();
            for (k, (dst, src)) in dst.chunks_mut(spatial).zip(src.chunks(spatial)).enumerate() {
                let ch = group * (c / g) + k;
                let scale = gamma[ch] * rstd;
                affine(src, dst, scale, beta[ch] - mean * scale, self.silu);
            }
        };
        if per_group.max(1) * batch * g >= PARALLEL_MIN && batch * g > 1 {
            out.par_chunks_mut(per_group.max(1))
                .enumerate()
                .for_each(norm);
        } else {
            out.chunks_mut(per_group.max(1)).enumerate().for_each(norm);
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

struct Softmax {
    scale: f32,
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "ferroserve-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = values("softmax", s, l)?;
        let d = l.shape().dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0f32; x.len()];
        let rows = |(dst, src): (&mut [f32], &[f32])| {
            for (dst, src) in dst.chunks_mut(d).zip(src.chunks(d)) {
                softmax_row(src, dst, self.scale);
            }
        };
        if x.len() >= PARALLEL_MIN {
            let per_task = (x.len() / (threads() * 8)).max(d) / d * d;
            out.par_chunks_mut(per_task)
                .zip(x.par_chunks(per_task))
                .for_each(rows);
        } else {
            rows((&mut out, x));
        }
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

struct Geglu;

impl CustomOp1 for Geglu {
    fn name(&self) -> &'static str {
        "ferroserve-geglu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = values("geglu", s, l)?;
        let mut dims = l.shape().dims().to_vec();
        let Some(last) = dims.last_mut() else {
            bail!("geglu: input is a scalar")
        };
        if *last % 2 != 0 {
            bail!("geglu: last dimension {} is odd", *last)
        }
        let d = *last;
        *last /= 2;
        let half = d / 2;
        let mut out = vec![0f32; x.len() / 2];
        let rows = |(dst, src): (&mut [f32], &[f32])| {
            for (dst, src) in dst.chunks_mut(half.max(1)).zip(src.chunks(d.max(1))) {
                let (a, gate) = src.split_at(half);
                geglu_row(a, gate, dst);
            }
        };
        if x.len() >= PARALLEL_MIN && half > 0 {
            let per_task = (out.len() / (threads() * 8)).max(half) / half;
            out.par_chunks_mut(per_task * half)
                .zip(x.par_chunks(per_task * d))
                .for_each(rows);
        } else {
            rows((&mut out, x));
        }
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

/// Runs `$body` compiled for AVX2 and FMA when the CPU has them, else for the baseline.
macro_rules! vectorised {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? $body:block) => {
        $(#[$doc])*
        fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the features it was compiled for were just detected.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

vectorised! {
    /// Mean and (biased) variance.
    fn mean_var(x: &[f32]) -> (f32, f32) {
        let n = x.len().max(1) as f32;
        let mean = sum(x) / n;
        let mut lanes = [0f32; 8];
        let chunks = x.chunks_exact(8);
        let tail: f32 = chunks.remainder().iter().map(|v| (v - mean) * (v - mean)).sum();
        for c in chunks {
            for (l, v) in lanes.iter_mut().zip(c) {
                *l += (v - mean) * (v - mean);
            }
        }
        (mean, (lanes.iter().sum::<f32>() + tail) / n)
    }
}

vectorised! {
    /// `dst = src * scale + shift`, then SiLU if asked.
    fn affine(src: &[f32], dst: &mut [f32], scale: f32, shift: f32, silu: bool) {
        if silu {
            for (d, s) in dst.iter_mut().zip(src) {
                let y = s * scale + shift;
                *d = y / (1.0 + exp(-y));
            }
        } else {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = s * scale + shift;
            }
        }
    }
}

vectorised! {
    /// One row of `softmax(scale * x)`.
    fn softmax_row(src: &[f32], dst: &mut [f32], scale: f32) {
        // Reductions in eight independent lanes: a single running value would keep the loop
        // from vectorising (float addition is not associative).
        let mut lanes = [f32::NEG_INFINITY; 8];
        let chunks = src.chunks_exact(8);
        let mut max = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        for c in chunks {
            for (l, &v) in lanes.iter_mut().zip(c) {
                *l = if v > *l { v } else { *l };
            }
        }
        for l in lanes {
            max = max.max(l);
        }
        let max = max * scale;
        for (d, s) in dst.iter_mut().zip(src) {
            *d = exp(s * scale - max);
        }
        let inv = 1.0 / sum(dst);
        for d in dst.iter_mut() {
            *d *= inv;
        }
    }
}

/// The sum of `x` in eight lanes (inlined into the vectorised callers).
#[inline(always)]
fn sum(x: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += v;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

vectorised! {
    /// `dst = a * gelu(gate)` with the exact (erf) GELU.
    fn geglu_row(a: &[f32], gate: &[f32], dst: &mut [f32]) {
        for ((d, a), g) in dst.iter_mut().zip(a).zip(gate) {
            *d = a * 0.5 * g * (1.0 + erf(g * std::f32::consts::FRAC_1_SQRT_2));
        }
    }
}

/// `e^x` to about 2 ulp for the f32 range, without a library call so loops over it vectorise.
#[inline(always)]
fn exp(x_in: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5 * 2^23 rounds to an integer held in the low mantissa bits: the integer k and
    // 2^k come from bit operations, where a float-to-int cast would be a scalar, saturating one.
    const ROUND: f32 = 12_582_912.0;
    let x = x_in.clamp(-87.0, 88.0);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let k = shifted - ROUND;
    let r = x - k * LN2_HI - k * LN2_LO;
    // Taylor terms to r^7 on |r| <= ln2 / 2.
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let k_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let y = p * f32::from_bits(k_bits.wrapping_add(127) << 23);
    // Below the clamp the true value is under f32's smallest normal: 0, as for -inf (a
    // masked score), rather than the clamp's 1.6e-38.
    if x_in < -87.0 {
        0.0
    } else {
        y
    }
}

/// The error function to within 1.5e-7 (Abramowitz and Stegun 7.1.26).
#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152 + t * 1.061_405_4))));
    (1.0 - poly * exp(-a * a)).copysign(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::largest_difference;
    use candle_core::{Device, Module};

    #[test]
    fn exp_and_erf_are_accurate() {
        for i in -8000..8000 {
            let x = i as f32 / 100.0;
            let want = x.exp();
            assert!(((exp(x) - want) / want).abs() < 1e-6, "exp({x})");
        }
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(f32::NAN).is_nan());
        for i in -600..600 {
            let x = i as f64 / 100.0;
            let want = libm_erf(x);
            assert!((erf(x as f32) as f64 - want).abs() < 3e-7, "erf({x})");
        }
    }

    /// erf by its Taylor series (converges everywhere; enough terms for |x| <= 6).
    fn libm_erf(x: f64) -> f64 {
        if x.abs() > 4.0 {
            return x.signum();
        }
        let (mut term, mut sum) = (x, x);
        for n in 1..200 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn convolutions_match_candle() {
        let d = Device::Cpu;
        for (b, c_in, h, w, c_out, k, stride, pad) in [
            (2, 5, 9, 7, 6, 3, 1, 1),
            (1, 4, 8, 8, 3, 3, 2, 1),
            (2, 3, 9, 9, 4, 3, 2, 0),
            (3, 6, 5, 4, 7, 1, 1, 0),
            (1, 2, 300, 300, 2, 3, 1, 1),
            // A kernel wider than the image plus one side's padding.
            (1, 2, 3, 3, 2, 7, 1, 2),
        ] {
            let x = Tensor::randn(0f32, 1.0, (b, c_in, h, w), &d).unwrap();
            let wt = Tensor::randn(0f32, 1.0, (c_out, c_in, k, k), &d).unwrap();
            let bias = Tensor::randn(0f32, 1.0, c_out, &d).unwrap();
            let want = generic::conv2d(&x, &wt, &bias, stride, pad).unwrap();
            let got = conv2d(&x, &wt, &bias, stride, pad).unwrap();
            assert_eq!(got.dims(), want.dims());
            assert!(
                largest_difference(&got, &want) < 1e-4,
                "conv {b}x{c_in}x{h}x{w} k{k} s{stride}"
            );
        }
    }

    #[test]
    fn norms_softmax_and_geglu_match_candle() {
        let d = Device::Cpu;
        let x = Tensor::randn(0f32, 3.0, (2, 64, 5, 7), &d).unwrap();
        let gamma = Tensor::randn(1f32, 0.5, 64, &d).unwrap();
        let beta = Tensor::randn(0f32, 0.5, 64, &d).unwrap();
        let gn = candle_nn::GroupNorm::new(gamma.clone(), beta.clone(), 64, 32, 1e-5).unwrap();
        let want = gn.forward(&x).unwrap();
        let got = group_norm(&x, &gamma, &beta, 32, 1e-5, false).unwrap();
        assert!(largest_difference(&got, &want) < 1e-4);
        let fallback = generic::group_norm(&x, &gamma, &beta, 32, 1e-5, false).unwrap();
        assert!(largest_difference(&fallback, &want) < 1e-4);
        let got = group_norm(&x, &gamma, &beta, 32, 1e-5, true).unwrap();
        let fallback = generic::group_norm(&x, &gamma, &beta, 32, 1e-5, true).unwrap();
        assert!(largest_difference(&got, &fallback) < 1e-4);
        assert!(largest_difference(&got, &candle_nn::ops::silu(&want).unwrap()) < 1e-4);

        let s = Tensor::randn(0f32, 4.0, (3, 70, 300), &d).unwrap();
        for scale in [0.3, -0.7] {
            let want = generic::softmax_last_dim(&s, scale).unwrap();
            assert!(largest_difference(&softmax_last_dim(&s, scale).unwrap(), &want) < 1e-6);
        }

        let g = Tensor::randn(0f32, 2.0, (2, 90, 64), &d).unwrap();
        let want = generic::geglu(&g).unwrap();
        assert!(largest_difference(&geglu(&g).unwrap(), &want) < 1e-5);
    }
}

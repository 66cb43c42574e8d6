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

mod attention;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod conv;
mod math;

use attention::{FlashAttention, Kernels};
use conv::Conv2d;
use math::{affine, geglu_row, mean_var};

/// Work below this many values runs on the calling thread: handing it to the pool costs more.
const PARALLEL_MIN: usize = 1 << 14;

/// Threads of the pool the kernels and candle's matrix products share.
fn threads() -> usize {
    rayon::current_num_threads().max(1)
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
            &Conv2d::new(stride, padding),
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

/// Multi-head attention, `softmax(q k^T / sqrt(d)) v` per head: q (batch, n, heads * d), k and
/// v (batch, s, heads * d), each head's channels side by side; the output has q's shape.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
    let width = q.dim(2)?;
    if heads == 0 || width % heads != 0 {
        bail!("attention: {width} channels do not split into {heads} heads")
    }
    let scale = 1.0 / ((width / heads) as f64).sqrt();
    if q.device().is_cpu() && q.dtype() == DType::F32 {
        q.contiguous()?.apply_op3_no_bwd(
            &k.contiguous()?,
            &v.contiguous()?,
            &FlashAttention {
                heads,
                scale: scale as f32,
                kernels: Kernels::best(),
            },
        )
    } else {
        generic::attention(q, k, v, heads, scale)
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

    /// Most bytes one block of attention scores may take: at 2048x2048 SD 1.5's first level
    /// has 65,536 tokens, whose scores would take 137 GB.
    const SCORES_BYTES: usize = 256 << 20;

    /// (batch, heads, tokens, d) from (batch, tokens, heads * d).
    fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        x.reshape((b, n, heads, c / heads))?
            .transpose(1, 2)?
            .contiguous()
    }

    pub fn attention(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        heads: usize,
        scale: f64,
    ) -> Result<Tensor> {
        attention_within(q, k, v, heads, scale, SCORES_BYTES)
    }

    /// [`attention`] with the scores of one block of query rows bounded to `scores_bytes`.
    pub fn attention_within(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        heads: usize,
        scale: f64,
        scores_bytes: usize,
    ) -> Result<Tensor> {
        let (q, k, v) = (
            split_heads(q, heads)?,
            split_heads(k, heads)?,
            split_heads(v, heads)?,
        );
        let (b, heads, n, d) = q.dims4()?;
        let s = k.dim(2)?;
        let kt = k.t()?;
        let attend = |q: &Tensor| softmax_last_dim(&q.matmul(&kt)?, scale)?.matmul(&v);
        // A block of query rows at a time where all the scores would not fit the bound.
        let rows = (scores_bytes / (b * heads * s * 4).max(1)).clamp(1, n.max(1));
        let out = if rows >= n {
            attend(&q)?
        } else {
            let blocks = (0..n)
                .step_by(rows)
                .map(|start| attend(&q.narrow(2, start, rows.min(n - start))?))
                .collect::<Result<Vec<_>>>()?;
            Tensor::cat(&blocks, 2)?
        };
        out.transpose(1, 2)?.reshape((b, n, heads * d))
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

#[cfg(test)]
mod tests {
    use super::math::{erf, exp};
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
            // Deep enough that MIN_COLUMNS sets the tile: 13 rows a tile, the last one short.
            (2, 64, 40, 40, 8, 3, 1, 1),
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
    fn norms_and_geglu_match_candle() {
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

        let g = Tensor::randn(0f32, 2.0, (2, 90, 64), &d).unwrap();
        let want = generic::geglu(&g).unwrap();
        assert!(largest_difference(&geglu(&g).unwrap(), &want) < 1e-5);
    }

    #[test]
    fn flash_attention_matches_attention_with_all_scores() {
        let d = Device::Cpu;
        // Query and key counts around the blocks' sizes (64 rows, 256 keys), one head and many,
        // self- and cross-attention shapes.
        for (b, n, s, heads, dim) in [
            (2, 37, 37, 4, 16),
            (2, 37, 11, 4, 16),
            (1, 64, 256, 1, 8),
            (1, 130, 600, 2, 24),
            (2, 300, 77, 8, 64),
            (1, 5, 513, 1, 512),
        ] {
            let q = Tensor::randn(0f32, 1.0, (b, n, dim), &d).unwrap();
            let k = Tensor::randn(0f32, 1.0, (b, s, dim), &d).unwrap();
            let v = Tensor::randn(0f32, 1.0, (b, s, dim), &d).unwrap();
            let scale = 1.0 / ((dim / heads) as f64).sqrt();
            let want = generic::attention(&q, &k, &v, heads, scale).unwrap();
            let got = attention(&q, &k, &v, heads).unwrap();
            assert_eq!(got.dims(), want.dims());
            let diff = largest_difference(&got, &want);
            assert!(diff < 1e-5, "b{b} n{n} s{s} heads{heads} dim{dim}: {diff}");
            // The portable form too, where the best one is AVX-512's.
            let portable = FlashAttention {
                heads,
                scale: scale as f32,
                kernels: Kernels::PORTABLE,
            };
            let got = q.apply_op3_no_bwd(&k, &v, &portable).unwrap();
            let diff = largest_difference(&got, &want);
            assert!(diff < 1e-5, "portable, b{b} n{n} s{s} heads{heads}: {diff}");
            // The fallback's blocks of 1 and 5 query rows give the same as all rows at once.
            for rows in [1, 5] {
                let blocks =
                    generic::attention_within(&q, &k, &v, heads, scale, rows * b * heads * s * 4)
                        .unwrap();
                assert!(largest_difference(&blocks, &want) < 1e-5, "{rows} rows");
            }
        }
        assert!(attention(
            &Tensor::zeros((1, 2, 6), DType::F32, &d).unwrap(),
            &Tensor::zeros((1, 3, 6), DType::F32, &d).unwrap(),
            &Tensor::zeros((1, 3, 6), DType::F32, &d).unwrap(),
            4
        )
        .is_err());
    }
}

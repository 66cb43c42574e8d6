//! transformers' logits warpers (temperature, top-h, top-k, top-p, min-p, typical, epsilon,
//! eta), applied after the processors when sampling, before the draw.
//!
//! Probabilities are computed in f64; the decisions (which tokens a warper removes) are
//! transformers' (`generation/logits_process.py`), and the tests check them against its
//! numbers.

use super::softmax::probabilities;
use super::Sampling;

/// Applies transformers' logits warpers, in the order its `_get_logits_processor` builds them.
/// `min_keep` is `min_tokens_to_keep`: 1, or 2 for beam sampling (one eos token and one more).
pub(super) fn warp(scores: &mut [f32], s: &Sampling, min_keep: usize) {
    if s.temperature != 1.0 {
        temperature(scores, s.temperature);
    }
    if let Some(h) = s.top_h {
        top_h(scores, h);
    }
    if s.top_k != 0 {
        top_k(scores, s.top_k, min_keep);
    }
    if s.top_p < 1.0 {
        top_p(scores, s.top_p, min_keep);
    }
    if let Some(m) = s.min_p {
        min_p(scores, m, min_keep);
    }
    if s.typical_p < 1.0 {
        typical(scores, s.typical_p, min_keep);
    }
    if s.epsilon_cutoff > 0.0 && s.epsilon_cutoff < 1.0 {
        epsilon(scores, s.epsilon_cutoff, min_keep);
    }
    if s.eta_cutoff > 0.0 && s.eta_cutoff < 1.0 {
        eta(scores, s.eta_cutoff, min_keep);
    }
}

/// The `k`-th largest score (k ≥ 1), as `torch.topk(scores, k)[0][-1]`.
fn kth_largest(scores: &[f32], k: usize) -> f32 {
    let mut sorted = scores.to_vec();
    let k = k.clamp(1, sorted.len());
    sorted.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    sorted[k - 1]
}

/// `TemperatureLogitsWarper`: the scores divided by `t`.
fn temperature(scores: &mut [f32], t: f32) {
    for s in scores {
        *s /= t;
    }
}

/// `TopKLogitsWarper`: scores below the `max(k, min_keep)`-th largest are removed (ties with
/// it stay).
fn top_k(scores: &mut [f32], k: usize, min_keep: usize) {
    let k = k.max(min_keep);
    if scores.is_empty() || k >= scores.len() {
        return;
    }
    let threshold = kth_largest(scores, k);
    for s in scores {
        if *s < threshold {
            *s = f32::NEG_INFINITY;
        }
    }
}

/// Indices of `values` from smallest to largest (ties by index).
fn ascending<T: Copy>(values: &[T], cmp: impl Fn(&T, &T) -> std::cmp::Ordering) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| cmp(&values[a], &values[b]).then(a.cmp(&b)));
    order
}

/// `TopPLogitsWarper`: from the least likely up, tokens are removed while the probability mass
/// removed stays at most `1 - top_p`; the `min_keep` most likely always stay.
fn top_p(scores: &mut [f32], top_p: f32, min_keep: usize) {
    let probs = probabilities(scores);
    let order = ascending(scores, |a: &f32, b: &f32| a.total_cmp(b));
    let limit = f64::from(1.0 - top_p);
    let removable = order.len().saturating_sub(min_keep);
    let mut cumulative = 0.0;
    for &i in &order[..removable] {
        cumulative += probs[i];
        if cumulative <= limit {
            scores[i] = f32::NEG_INFINITY;
        } else {
            break;
        }
    }
}

/// `MinPLogitsWarper`: tokens less likely than `min_p` times the most likely one are removed;
/// the `min_keep` most likely always stay.
fn min_p(scores: &mut [f32], min_p: f32, min_keep: usize) {
    let probs = probabilities(scores);
    let top = probs.iter().copied().fold(0.0, f64::max);
    let threshold = f64::from(min_p) * top;
    let order = ascending(&probs, |a: &f64, b: &f64| b.total_cmp(a));
    let keep: Vec<usize> = order.into_iter().take(min_keep).collect();
    for (i, s) in scores.iter_mut().enumerate() {
        if probs[i] < threshold && !keep.contains(&i) {
            *s = f32::NEG_INFINITY;
        }
    }
}

/// Shannon entropy (nats) of `probs`; tokens of probability 0 count for nothing.
fn entropy(probs: &[f64]) -> f64 {
    -probs
        .iter()
        .filter(|&&p| p > 0.0)
        .map(|&p| p * p.ln())
        .sum::<f64>()
}

/// `TypicalLogitsWarper`: tokens are ranked by how far their surprise (-log p) is from the
/// entropy; the closest are kept until their mass reaches `mass`, with every token as close as
/// the last one kept, and at least the `min_keep` closest.
fn typical(scores: &mut [f32], mass: f32, min_keep: usize) {
    let probs = probabilities(scores);
    let ent = entropy(&probs);
    let shifted: Vec<f64> = probs.iter().map(|&p| (-p.ln() - ent).abs()).collect();
    let order = ascending(&shifted, |a: &f64, b: &f64| a.total_cmp(b));
    let mut cumulative = 0.0;
    let mut below = 0;
    for &i in &order {
        cumulative += probs[i];
        if cumulative < f64::from(mass) {
            below += 1;
        }
    }
    let last = below.min(order.len().saturating_sub(1));
    let Some(&at) = order.get(last) else {
        return;
    };
    let threshold = shifted[at];
    for (rank, &i) in order.iter().enumerate() {
        if rank >= min_keep && shifted[i] > threshold {
            scores[i] = f32::NEG_INFINITY;
        }
    }
}

/// Removes tokens of probability below `cutoff(probabilities)`, but never the `min_keep`
/// best-scored.
fn remove_below(scores: &mut [f32], min_keep: usize, cutoff: impl FnOnce(&[f64]) -> f64) {
    // `kth_largest` needs a score.
    if scores.is_empty() {
        return;
    }
    let probs = probabilities(scores);
    let cutoff = cutoff(&probs);
    let kth = kth_largest(scores, min_keep);
    for (s, &p) in scores.iter_mut().zip(&probs) {
        if p < cutoff && *s < kth {
            *s = f32::NEG_INFINITY;
        }
    }
}

/// `EpsilonLogitsWarper`: tokens of probability below `epsilon` are removed.
fn epsilon(scores: &mut [f32], epsilon: f32, min_keep: usize) {
    remove_below(scores, min_keep, |_| f64::from(epsilon));
}

/// `EtaLogitsWarper`: tokens of probability below `min(epsilon, sqrt(epsilon) * exp(-entropy))`
/// are removed.
fn eta(scores: &mut [f32], epsilon: f32, min_keep: usize) {
    let epsilon = f64::from(epsilon);
    remove_below(scores, min_keep, |probs| {
        epsilon.min(epsilon.sqrt() * (-entropy(probs)).exp())
    });
}

/// `TopHLogitsWarper`: among the 100 most likely tokens (renormalised), the most likely are
/// kept while their entropy terms add up to at most `top_h` times the entropy of those 100;
/// the most likely always stays, the others are removed.
fn top_h(scores: &mut [f32], top_h: f32) {
    const TOP_N: usize = 100;
    let order = ascending(scores, |a: &f32, b: &f32| b.total_cmp(a));
    let top: Vec<usize> = order.into_iter().take(TOP_N).collect();
    let logits: Vec<f32> = top.iter().map(|&i| scores[i]).collect();
    let probs = probabilities(&logits);
    let tau = entropy(&probs) * f64::from(top_h);
    let mut keep = vec![false; scores.len()];
    let mut cumulative = 0.0;
    for (rank, (&i, &p)) in top.iter().zip(&probs).enumerate() {
        // transformers' -p * log(p) is NaN at p = 0, and so is every sum after it.
        cumulative += if p > 0.0 { -p * p.ln() } else { f64::NAN };
        if rank == 0 || cumulative <= tau {
            keep[i] = true;
        }
    }
    for (s, keep) in scores.iter_mut().zip(keep) {
        if !keep {
            *s = f32::NEG_INFINITY;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEG: f32 = f32::NEG_INFINITY;
    // The logit vectors of scripts/sampling_reference.py (its `V1` to `V4` and `TIES`).
    const V1: [f32; 8] = [2.0, -1.0, 0.5, 3.5, 0.0, 1.25, -2.5, 3.0];
    const V2: [f32; 10] = [NEG, 1.0, 4.0, 2.0, 2.5, -0.5, 0.25, NEG, 3.25, 1.5];
    const V3: [f32; 6] = [10.0, 1.0, 0.5, 0.2, -1.0, 0.3];
    const TIES: [f32; 5] = [1.0, 2.0, 2.0, 3.0, 0.5];
    const V4: [f32; 8] = [4.0, 3.0, 3.1, 2.9, 3.05, 2.95, 0.0, -1.0];

    /// The same -inf entries, and finite values within float rounding.
    fn assert_same(name: &str, got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "{name}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            if *w == NEG {
                assert_eq!(*g, NEG, "{name}[{i}]: {got:?}");
            } else {
                assert!(
                    (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                    "{name}[{i}]: {got:?} vs {want:?}"
                );
            }
        }
    }

    type Warper = dyn Fn(&mut [f32]);

    /// Each warper against transformers' on the same logits: the expected rows are what
    /// `python scripts/sampling_reference.py` prints (its CASES but the last two), each through
    /// one of transformers 5.23's `TemperatureLogitsWarper`, `TopKLogitsWarper`,
    /// `TopPLogitsWarper`, `MinPLogitsWarper`, `TypicalLogitsWarper`, `EpsilonLogitsWarper`,
    /// `EtaLogitsWarper` or `TopHLogitsWarper` with the same arguments.
    #[test]
    fn warpers_match_transformers() {
        let cases: &[(&str, &[f32], &Warper, &[f32])] = &[
            (
                "temperature_0_7_v1",
                &V1,
                &|s| temperature(s, 0.7),
                &[
                    2.857143, -1.4285715, 0.71428573, 5.0, 0.0, 1.7857143, -3.5714285, 4.285714,
                ],
            ),
            (
                "temperature_1_3_v2",
                &V2,
                &|s| temperature(s, 1.3),
                &[
                    NEG, 0.7692308, 3.0769231, 1.5384616, 1.923077, -0.3846154, 0.1923077, NEG,
                    2.5, 1.1538461,
                ],
            ),
            (
                "top_k_3_v1",
                &V1,
                &|s| top_k(s, 3, 1),
                &[2.0, NEG, NEG, 3.5, NEG, NEG, NEG, 3.0],
            ),
            (
                "top_k_1_v2",
                &V2,
                &|s| top_k(s, 1, 1),
                &[NEG, NEG, 4.0, NEG, NEG, NEG, NEG, NEG, NEG, NEG],
            ),
            (
                "top_k_2_keep_4_v1",
                &V1,
                &|s| top_k(s, 2, 4),
                &[2.0, NEG, NEG, 3.5, NEG, 1.25, NEG, 3.0],
            ),
            (
                "top_k_2_ties",
                &TIES,
                &|s| top_k(s, 2, 1),
                &[NEG, 2.0, 2.0, 3.0, NEG],
            ),
            (
                "top_p_0_8_v1",
                &V1,
                &|s| top_p(s, 0.8, 1),
                &[2.0, NEG, NEG, 3.5, NEG, NEG, NEG, 3.0],
            ),
            (
                "top_p_0_5_v2",
                &V2,
                &|s| top_p(s, 0.5, 1),
                &[NEG, NEG, 4.0, NEG, NEG, NEG, NEG, NEG, NEG, NEG],
            ),
            (
                "top_p_0_3_keep_3_v1",
                &V1,
                &|s| top_p(s, 0.3, 3),
                &[2.0, NEG, NEG, 3.5, NEG, NEG, NEG, 3.0],
            ),
            (
                "min_p_0_1_v1",
                &V1,
                &|s| min_p(s, 0.1, 1),
                &[2.0, NEG, NEG, 3.5, NEG, 1.25, NEG, 3.0],
            ),
            (
                "min_p_0_3_v2",
                &V2,
                &|s| min_p(s, 0.3, 1),
                &[NEG, NEG, 4.0, NEG, NEG, NEG, NEG, NEG, 3.25, NEG],
            ),
            (
                "min_p_0_9_keep_2_v3",
                &V3,
                &|s| min_p(s, 0.9, 2),
                &[10.0, 1.0, NEG, NEG, NEG, NEG],
            ),
            (
                "typical_0_9_v1",
                &V1,
                &|s| typical(s, 0.9, 1),
                &[2.0, NEG, NEG, 3.5, NEG, NEG, NEG, 3.0],
            ),
            (
                "typical_0_5_v2",
                &V2,
                &|s| typical(s, 0.5, 1),
                &[NEG, NEG, 4.0, NEG, NEG, NEG, NEG, NEG, 3.25, NEG],
            ),
            (
                "typical_0_2_v3",
                &V3,
                &|s| typical(s, 0.2, 1),
                &[10.0, NEG, NEG, NEG, NEG, NEG],
            ),
            (
                "typical_0_2_keep_2_v3",
                &V3,
                &|s| typical(s, 0.2, 2),
                &[10.0, 1.0, NEG, NEG, NEG, NEG],
            ),
            (
                "typical_0_3_v4",
                &V4,
                &|s| typical(s, 0.3, 1),
                &[NEG, 3.0, 3.1, NEG, 3.05, NEG, NEG, NEG],
            ),
            (
                "typical_0_5_v4",
                &V4,
                &|s| typical(s, 0.5, 1),
                &[NEG, 3.0, 3.1, NEG, 3.05, 2.95, NEG, NEG],
            ),
            (
                "epsilon_0_05_v1",
                &V1,
                &|s| epsilon(s, 0.05, 1),
                &[2.0, NEG, NEG, 3.5, NEG, 1.25, NEG, 3.0],
            ),
            (
                "epsilon_0_5_keep_2_v2",
                &V2,
                &|s| epsilon(s, 0.5, 2),
                &[NEG, NEG, 4.0, NEG, NEG, NEG, NEG, NEG, 3.25, NEG],
            ),
            (
                "epsilon_0_2_v4",
                &V4,
                &|s| epsilon(s, 0.2, 1),
                &[4.0, NEG, NEG, NEG, NEG, NEG, NEG, NEG],
            ),
            (
                "eta_0_05_v1",
                &V1,
                &|s| eta(s, 0.05, 1),
                &[2.0, NEG, NEG, 3.5, NEG, 1.25, NEG, 3.0],
            ),
            (
                "eta_0_2_v4",
                &V4,
                &|s| eta(s, 0.2, 1),
                &[4.0, 3.0, 3.1, 2.9, 3.05, 2.95, NEG, NEG],
            ),
            (
                "eta_0_3_v3",
                &V3,
                &|s| eta(s, 0.3, 1),
                &[10.0, NEG, NEG, NEG, NEG, NEG],
            ),
            (
                "top_h_0_4_v1",
                &V1,
                &|s| top_h(s, 0.4),
                &[NEG, NEG, NEG, 3.5, NEG, NEG, NEG, NEG],
            ),
            (
                "top_h_0_9_v2",
                &V2,
                &|s| top_h(s, 0.9),
                &[NEG, NEG, 4.0, 2.0, 2.5, NEG, NEG, NEG, 3.25, 1.5],
            ),
            (
                "top_h_0_5_v4",
                &V4,
                &|s| top_h(s, 0.5),
                &[4.0, NEG, 3.1, NEG, NEG, NEG, NEG, NEG],
            ),
        ];
        for (name, logits, warper, want) in cases {
            let mut s = logits.to_vec();
            warper(&mut s);
            assert_same(name, &s, want);
        }
    }

    /// [`warp`] applies them in transformers' order (the last two CASES of the script).
    #[test]
    fn warpers_chain_in_transformers_order() {
        let s1 = Sampling {
            temperature: 0.7,
            top_k: 5,
            top_p: 0.9,
            ..Sampling::default()
        };
        let mut s = V1.to_vec();
        warp(&mut s, &s1, 1);
        assert_same("chain 1", &s, &CHAIN1);
        let s2 = Sampling {
            temperature: 1.5,
            top_k: 6,
            top_p: 0.95,
            min_p: Some(0.05),
            typical_p: 0.9,
            ..Sampling::default()
        };
        let mut s = V2.to_vec();
        warp(&mut s, &s2, 1);
        assert_same("chain 2", &s, &CHAIN2);
        // Neutral settings change nothing; transformers' default top_k of 50 keeps 8 of 8.
        let mut s = V1.to_vec();
        warp(&mut s, &Sampling::default(), 1);
        assert_eq!(s, V1.to_vec());
    }

    const CHAIN1: [f32; 8] = [2.857143, NEG, NEG, 5.0, NEG, NEG, NEG, 4.285714];
    const CHAIN2: [f32; 10] = [
        NEG, NEG, 2.6666667, 1.3333334, 1.6666666, NEG, NEG, NEG, 2.1666667, 1.0,
    ];
}

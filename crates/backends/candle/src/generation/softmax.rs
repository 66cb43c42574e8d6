//! Scores turned into (log-)probabilities, for beam search's scores, the warpers and the draws.

/// `scores` as log-probabilities. A row with no finite score stays as it is.
pub(super) fn log_softmax(scores: &mut [f32]) {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return;
    }
    let sum: f64 = scores.iter().map(|&s| f64::from(s - max).exp()).sum();
    let lse = max + sum.ln() as f32;
    for s in scores {
        *s -= lse;
    }
}

/// Probabilities of `scores` (softmax), in f64. Tokens at +inf share all the mass; a row with
/// no finite or +inf score (all -inf or NaN) gets none anywhere. NaN scores get none.
pub(super) fn probabilities(scores: &[f32]) -> Vec<f64> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let weights: Vec<f64> = if max == f32::INFINITY {
        scores
            .iter()
            .map(|&s| if s == f32::INFINITY { 1.0 } else { 0.0 })
            .collect()
    } else if max == f32::NEG_INFINITY {
        return vec![0.0; scores.len()];
    } else {
        let max = f64::from(max);
        scores
            .iter()
            .map(|&s| {
                let w = (f64::from(s) - max).exp();
                if w.is_nan() {
                    0.0
                } else {
                    w
                }
            })
            .collect()
    };
    let total: f64 = weights.iter().sum();
    weights.into_iter().map(|w| w / total).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEG: f32 = f32::NEG_INFINITY;

    #[test]
    fn log_softmax_sums_to_one() {
        let mut s = vec![1.0, 2.0, 3.0];
        log_softmax(&mut s);
        let total: f32 = s.iter().map(|x| x.exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        let mut s = vec![NEG, NEG];
        log_softmax(&mut s);
        assert_eq!(s, [NEG, NEG]);
    }
}

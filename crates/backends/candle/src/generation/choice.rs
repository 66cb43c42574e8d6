//! The next token(s) chosen from processed scores: the best ones (greedy and beam search) or
//! random draws with their softmax probabilities (sampling).

use std::cmp::Ordering;

use rand::Rng;

use super::softmax::probabilities;

/// Index of the first largest score (torch's argmax); NaN never wins.
pub(super) fn argmax(scores: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &s) in scores.iter().enumerate() {
        if s > scores[best] || (scores[best].is_nan() && !s.is_nan()) {
            best = i;
        }
    }
    best as u32
}

/// The `k` largest values with their indices, largest first; ties go to the lower index.
pub(super) fn top_k(values: &[f32], k: usize) -> Vec<(f32, usize)> {
    first_k(values.iter().copied().zip(0..).collect(), k, largest_first)
}

/// A token drawn with the probabilities of `scores` (torch.multinomial on their softmax).
/// With no probability anywhere (every token banned) it is [`argmax`]'s choice.
pub(super) fn sample<R: Rng>(scores: &[f32], rng: &mut R) -> u32 {
    let probs = probabilities(scores);
    let u: f64 = rng.random();
    let mut cumulative = 0.0;
    let mut last = None;
    for (i, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            cumulative += p;
            last = Some(i);
            if u < cumulative {
                return i as u32;
            }
        }
    }
    // Rounding left `u` above the total: the last possible token.
    last.map_or_else(|| argmax(scores), |i| i as u32)
}

/// `k` distinct indices drawn without replacement with the probabilities of `scores`, in the
/// order drawn, with their scores (torch.multinomial with `replacement=False`: each draw
/// renormalises over what is left). Drawn as an exponential race: index `i` arrives at
/// `E_i / p_i` with `E_i` exponential, and the first `k` to arrive are a draw without
/// replacement in that order. When fewer than `k` indices have any probability (torch refuses
/// such a draw) the rest are the best-scored of the others.
pub(super) fn sample_without_replacement<R: Rng>(
    scores: &[f32],
    k: usize,
    rng: &mut R,
) -> Vec<(f32, usize)> {
    let probs = probabilities(scores);
    let arrivals: Vec<(f64, usize)> = probs
        .iter()
        .enumerate()
        .filter(|(_, &p)| p > 0.0)
        .map(|(i, &p)| {
            let u: f64 = rng.random();
            (-(1.0 - u).ln() / p, i)
        })
        .collect();
    let arrivals = first_k(arrivals, k, |a: &(f64, usize), b: &(f64, usize)| {
        a.0.total_cmp(&b.0).then(a.1.cmp(&b.1))
    });
    let mut chosen: Vec<(f32, usize)> = arrivals.iter().map(|&(_, i)| (scores[i], i)).collect();
    if chosen.len() < k {
        let rest: Vec<(f32, usize)> = scores
            .iter()
            .copied()
            .zip(0..)
            .filter(|&(_, i)| probs[i] <= 0.0)
            .collect();
        chosen.extend(first_k(rest, k - chosen.len(), largest_first));
    }
    chosen
}

/// Larger value first; ties go to the lower index.
fn largest_first(a: &(f32, usize), b: &(f32, usize)) -> Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

/// The first `k` of `items` in `order` (a total order), in that order; all of them when there
/// are fewer.
fn first_k<T>(mut items: Vec<T>, k: usize, order: impl Fn(&T, &T) -> Ordering) -> Vec<T> {
    if k > 0 && k < items.len() {
        items.select_nth_unstable_by(k - 1, &order);
    }
    items.truncate(k);
    items.sort_by(order);
    items
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    const NEG: f32 = f32::NEG_INFINITY;

    #[test]
    fn top_k_is_sorted_and_stable() {
        let v = [1.0, 3.0, 3.0, -1.0, 2.0];
        assert_eq!(top_k(&v, 3), vec![(3.0, 1), (3.0, 2), (2.0, 4)]);
        assert_eq!(top_k(&v, 9).len(), 5);
    }

    #[test]
    fn draws_follow_the_softmax() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let scores = [0.0f32, 1.0, NEG, 2.0];
        let probs = probabilities(&scores);
        let n = 40_000;
        let mut counts = [0usize; 4];
        for _ in 0..n {
            counts[sample(&scores, &mut rng) as usize] += 1;
        }
        assert_eq!(counts[2], 0, "a removed token was drawn");
        for (c, p) in counts.iter().zip(&probs) {
            let f = *c as f64 / n as f64;
            assert!((f - p).abs() < 0.01, "{counts:?} vs {probs:?}");
        }
        // Nothing drawable: the best score's token, as greedy search would.
        assert_eq!(sample(&[NEG, NEG], &mut rng), 0);
        // Overflowed logits (a tiny temperature) share the mass.
        let s: Vec<f32> = [0.1f32, 3.0, 3.0, -2.0].iter().map(|x| x / 1e-39).collect();
        assert_eq!(s[1], f32::INFINITY);
        for _ in 0..100 {
            assert!(matches!(sample(&s, &mut rng), 1 | 2));
        }
    }

    #[test]
    fn draws_without_replacement_are_distinct_and_follow_the_softmax() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let scores = [0.0f32, 1.0, NEG, 2.0, -1.0];
        let probs = probabilities(&scores);
        let n = 40_000;
        let mut first = [0usize; 5];
        for _ in 0..n {
            let drawn = sample_without_replacement(&scores, 3, &mut rng);
            let mut ids: Vec<usize> = drawn.iter().map(|d| d.1).collect();
            assert!(drawn.iter().all(|&(s, i)| s == scores[i]));
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), 3);
            assert!(!ids.contains(&2));
            first[drawn[0].1] += 1;
        }
        // The first draw is an ordinary draw.
        for (c, p) in first.iter().zip(&probs) {
            assert!(
                (*c as f64 / n as f64 - p).abs() < 0.01,
                "{first:?} vs {probs:?}"
            );
        }
        // Fewer drawable tokens than asked: the rest by score.
        let drawn = sample_without_replacement(&[NEG, 5.0, NEG, -3.0e38], 3, &mut rng);
        assert_eq!(drawn.iter().map(|d| d.1).collect::<Vec<_>>(), vec![1, 3, 0]);
    }
}

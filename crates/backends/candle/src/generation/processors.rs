//! Adjustments of the next-token scores of one sequence before a token is chosen, in the order
//! transformers applies them: the logits processors ([`process`]), then, when sampling, the
//! logits warpers ([`warp`]) and a multinomial draw ([`sample`]).
//!
//! Probabilities are computed in f64; the decisions (which tokens a warper removes) are
//! transformers' (`generation/logits_process.py`), and the tests check them against its
//! numbers.

use rand::Rng;

use super::{Generation, Sampling};

/// Applies the logits processors to `scores` (logits for greedy search and sampling,
/// log-probabilities for beam search) of a sequence that has `seq` so far (the decoder start
/// token first) and whose input (encoder tokens) is `input`.
pub(crate) fn process(scores: &mut [f32], seq: &[u32], g: &Generation, eos: u32, input: &[u32]) {
    if !g.sequence_bias.is_empty() {
        sequence_bias(scores, seq, &g.sequence_bias);
    }
    if g.encoder_repetition_penalty != 1.0 {
        // transformers stores the inverse: tokens of the input get more likely for a penalty > 1.
        repetition_penalty(scores, input, 1.0 / g.encoder_repetition_penalty);
    }
    if g.repetition_penalty != 1.0 {
        repetition_penalty(scores, seq, g.repetition_penalty);
    }
    if g.no_repeat_ngram_size > 0 {
        ban_repeated_ngrams(scores, seq, seq, g.no_repeat_ngram_size);
    }
    if g.encoder_no_repeat_ngram_size > 0 {
        ban_repeated_ngrams(scores, seq, input, g.encoder_no_repeat_ngram_size);
    }
    if !g.bad_words_ids.is_empty() {
        ban_bad_words(scores, seq, &g.bad_words_ids, eos);
    }
    if seq.len() < g.min_length {
        set(scores, eos, f32::NEG_INFINITY);
    }
    if let Some(bos) = g.forced_bos_token_id {
        if seq.len() == 1 {
            force(scores, &[bos]);
        }
    }
    if !g.forced_eos_token_id.is_empty() && seq.len() + 1 == g.max_length {
        force(scores, &g.forced_eos_token_id);
    }
    if g.remove_invalid_values {
        remove_invalid_values(scores);
    }
    if let Some((start, factor)) = g.exponential_decay_length_penalty {
        // Counted from the decoder prompt, the start token.
        exponential_decay(scores, seq.len(), start.saturating_add(1), factor, eos);
    }
    for &t in &g.suppress_tokens {
        set(scores, t, f32::NEG_INFINITY);
    }
    // The first generated token, or the one after the forced first token.
    let begin = 1 + usize::from(g.forced_bos_token_id.is_some());
    if seq.len() == begin {
        for &t in &g.begin_suppress_tokens {
            set(scores, t, f32::NEG_INFINITY);
        }
    }
}

/// Applies transformers' logits warpers, in the order its `_get_logits_processor` builds them.
/// `min_keep` is `min_tokens_to_keep`: 1, or 2 for beam sampling (one eos token and one more).
pub(crate) fn warp(scores: &mut [f32], s: &Sampling, min_keep: usize) {
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

fn set(scores: &mut [f32], token: u32, value: f32) {
    if let Some(s) = scores.get_mut(token as usize) {
        *s = value;
    }
}

/// Makes every token of `tokens` less likely: negative scores are multiplied by the penalty,
/// positive ones divided (CTRL's rule, as transformers has it); each token once.
fn repetition_penalty(scores: &mut [f32], tokens: &[u32], penalty: f32) {
    let mut seen = vec![false; scores.len()];
    for &t in tokens {
        let t = t as usize;
        if t < scores.len() && !seen[t] {
            seen[t] = true;
            let s = scores[t];
            scores[t] = if s < 0.0 { s * penalty } else { s / penalty };
        }
    }
}

/// Forbids every token that would make the last `n` tokens of `seq` an n-gram of `source`
/// (`seq` itself for `no_repeat_ngram_size`, the input for `encoder_no_repeat_ngram_size`).
fn ban_repeated_ngrams(scores: &mut [f32], seq: &[u32], source: &[u32], n: usize) {
    if seq.len() + 1 < n {
        return;
    }
    let prefix = &seq[seq.len() + 1 - n..];
    for window in source.windows(n) {
        if &window[..n - 1] == prefix {
            set(scores, window[n - 1], f32::NEG_INFINITY);
        }
    }
}

/// Forbids the last token of every bad word whose other tokens end `seq`. A bad word that is
/// the end-of-sequence token alone is dropped, as transformers does.
fn ban_bad_words(scores: &mut [f32], seq: &[u32], bad_words: &[Vec<u32>], eos: u32) {
    for word in bad_words {
        if let Some((&last, prefix)) = word.split_last() {
            if word.as_slice() != [eos] && seq.ends_with(prefix) {
                set(scores, last, f32::NEG_INFINITY);
            }
        }
    }
}

/// Adds each sequence's bias to its last token when `seq` ends with the others (all the
/// biases of a token summed first, as transformers does).
fn sequence_bias(scores: &mut [f32], seq: &[u32], biases: &[(Vec<u32>, f32)]) {
    let mut hits: Vec<(u32, f32)> = biases
        .iter()
        .filter_map(|(ids, bias)| {
            let (&last, prefix) = ids.split_last()?;
            seq.ends_with(prefix).then_some((last, *bias))
        })
        .collect();
    hits.sort_by_key(|h| h.0);
    let mut i = 0;
    while i < hits.len() {
        let token = hits[i].0;
        let mut total = 0.0f32;
        while i < hits.len() && hits[i].0 == token {
            total += hits[i].1;
            i += 1;
        }
        if let Some(s) = scores.get_mut(token as usize) {
            *s += total;
        }
    }
}

/// Every token but `tokens` impossible; `tokens` scored 0.
fn force(scores: &mut [f32], tokens: &[u32]) {
    scores.fill(f32::NEG_INFINITY);
    for &t in tokens {
        set(scores, t, 0.0);
    }
}

/// NaN to 0, infinities to the largest finite values (`InfNanRemoveLogitsProcessor`).
fn remove_invalid_values(scores: &mut [f32]) {
    for s in scores {
        if s.is_nan() {
            *s = 0.0;
        } else if *s == f32::INFINITY {
            *s = f32::MAX;
        } else if *s == f32::NEG_INFINITY {
            *s = f32::MIN;
        }
    }
}

/// `ExponentialDecayLengthPenalty`: past `start` tokens, the end-of-sequence score grows by
/// `|score| * (factor ^ (length - start) - 1)`.
fn exponential_decay(scores: &mut [f32], len: usize, start: usize, factor: f32, eos: u32) {
    if len > start {
        if let Some(s) = scores.get_mut(eos as usize) {
            if s.is_finite() {
                let steps = i32::try_from(len - start).unwrap_or(i32::MAX);
                *s += s.abs() * (f64::from(factor).powi(steps) - 1.0) as f32;
            }
        }
    }
}

/// `scores` as log-probabilities. A row with no finite score stays as it is.
pub(crate) fn log_softmax(scores: &mut [f32]) {
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
pub(crate) fn probabilities(scores: &[f32]) -> Vec<f64> {
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

/// Index of the first largest score (torch's argmax); NaN never wins.
pub(crate) fn argmax(scores: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &s) in scores.iter().enumerate() {
        if s > scores[best] || (scores[best].is_nan() && !s.is_nan()) {
            best = i;
        }
    }
    best as u32
}

/// A token drawn with the probabilities of `scores` (torch.multinomial on their softmax).
/// With no probability anywhere (every token banned) it is [`argmax`]'s choice.
pub(crate) fn sample<R: Rng>(scores: &[f32], rng: &mut R) -> u32 {
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
pub(crate) fn sample_without_replacement<R: Rng>(
    scores: &[f32],
    k: usize,
    rng: &mut R,
) -> Vec<(f32, usize)> {
    let probs = probabilities(scores);
    let mut arrivals: Vec<(f64, usize)> = probs
        .iter()
        .enumerate()
        .filter(|(_, &p)| p > 0.0)
        .map(|(i, &p)| {
            let u: f64 = rng.random();
            (-(1.0 - u).ln() / p, i)
        })
        .collect();
    let order = |a: &(f64, usize), b: &(f64, usize)| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1));
    if arrivals.len() > k && k > 0 {
        arrivals.select_nth_unstable_by(k - 1, order);
    }
    arrivals.truncate(k);
    arrivals.sort_by(order);
    let mut chosen: Vec<(f32, usize)> = arrivals.iter().map(|&(_, i)| (scores[i], i)).collect();
    if chosen.len() < k {
        let mut rest: Vec<(f32, usize)> = scores
            .iter()
            .copied()
            .zip(0..)
            .filter(|&(_, i)| probs[i] <= 0.0)
            .collect();
        rest.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        chosen.extend(rest.into_iter().take(k - chosen.len()));
    }
    chosen
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

/// Removes tokens of probability below `cutoff`, but never the `min_keep` best-scored.
fn remove_below(scores: &mut [f32], probs: &[f64], cutoff: f64, min_keep: usize) {
    let kth = kth_largest(scores, min_keep);
    for (s, &p) in scores.iter_mut().zip(probs) {
        if p < cutoff && *s < kth {
            *s = f32::NEG_INFINITY;
        }
    }
}

/// `EpsilonLogitsWarper`: tokens of probability below `epsilon` are removed.
fn epsilon(scores: &mut [f32], epsilon: f32, min_keep: usize) {
    if scores.is_empty() {
        return;
    }
    let probs = probabilities(scores);
    remove_below(scores, &probs, f64::from(epsilon), min_keep);
}

/// `EtaLogitsWarper`: tokens of probability below `min(epsilon, sqrt(epsilon) * exp(-entropy))`
/// are removed.
fn eta(scores: &mut [f32], epsilon: f32, min_keep: usize) {
    if scores.is_empty() {
        return;
    }
    let probs = probabilities(scores);
    let epsilon = f64::from(epsilon);
    let cutoff = epsilon.min(epsilon.sqrt() * (-entropy(&probs)).exp());
    remove_below(scores, &probs, cutoff, min_keep);
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
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    const NEG: f32 = f32::NEG_INFINITY;
    // The logit vectors of scripts/sampling_reference.py (lines 27-31).
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
    /// `python scripts/sampling_reference.py` prints (its CASES, lines 33-79), each through one
    /// of transformers 5.23's `TemperatureLogitsWarper`, `TopKLogitsWarper`,
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
        let mut s = vec![0.1f32, 3.0, 3.0, -2.0];
        temperature(&mut s, 1e-39);
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

    #[test]
    fn penalties_and_bans() {
        let mut s = vec![2.0, -2.0, 1.0, 0.5];
        let g = Generation {
            repetition_penalty: 2.0,
            ..Generation::default()
        };
        process(&mut s, &[0, 1, 1], &g, 3, &[]);
        assert_eq!(s, vec![1.0, -4.0, 1.0, 0.5]);

        let mut s = vec![0.0; 5];
        let g = Generation {
            no_repeat_ngram_size: 2,
            ..Generation::default()
        };
        // "1 2" appeared after a 1, and the sequence ends in 1: 2 is banned; so is 4 ("1 4").
        process(&mut s, &[1, 2, 3, 1, 4, 1], &g, 0, &[]);
        assert_eq!(s[2], NEG);
        assert_eq!(s[4], NEG);
        assert_eq!(s[3], 0.0);

        let mut s = vec![0.0; 3];
        let g = Generation {
            min_length: 3,
            ..Generation::default()
        };
        process(&mut s, &[0, 1], &g, 2, &[]);
        assert_eq!(s[2], NEG);
        let mut s = vec![0.0; 3];
        process(&mut s, &[0, 1, 1], &g, 2, &[]);
        assert_eq!(s[2], 0.0);
    }

    /// The other processors, as transformers' `EncoderRepetitionPenaltyLogitsProcessor`,
    /// `EncoderNoRepeatNGramLogitsProcessor`, `NoBadWordsLogitsProcessor`,
    /// `SequenceBiasLogitsProcessor`, `ForcedBOSTokenLogitsProcessor`,
    /// `ForcedEOSTokenLogitsProcessor`, `InfNanRemoveLogitsProcessor`,
    /// `ExponentialDecayLengthPenalty`, `SuppressTokensLogitsProcessor` and
    /// `SuppressTokensAtBeginLogitsProcessor` have them.
    #[test]
    fn the_other_processors() {
        let eos = 1;
        let g = |f: fn(&mut Generation)| {
            let mut g = Generation::default();
            f(&mut g);
            g
        };
        let run = |g: &Generation, seq: &[u32], input: &[u32]| {
            let mut s = vec![2.0f32, -2.0, 1.0, 0.5, -1.0, 3.0];
            process(&mut s, seq, g, eos, input);
            s
        };
        // Input tokens are encouraged by a penalty above 1 (each once).
        let e = g(|g| g.encoder_repetition_penalty = 2.0);
        assert_eq!(run(&e, &[0], &[1, 2, 2]), [2.0, -1.0, 2.0, 0.5, -1.0, 3.0]);
        // No 2-gram of the input: the input has "5 3" and "5 4", the output ends in 5.
        let e = g(|g| g.encoder_no_repeat_ngram_size = 2);
        assert_eq!(
            run(&e, &[0, 5], &[5, 3, 1, 5, 4]),
            [2.0, -2.0, 1.0, NEG, NEG, 3.0]
        );
        // Bad words: [2] always, [5, 3] after a 5, [1] (eos alone) is dropped.
        let e = g(|g| g.bad_words_ids = vec![vec![2], vec![5, 3], vec![1]]);
        assert_eq!(run(&e, &[0, 5], &[]), [2.0, -2.0, NEG, NEG, -1.0, 3.0]);
        assert_eq!(run(&e, &[0, 4], &[]), [2.0, -2.0, NEG, 0.5, -1.0, 3.0]);
        // Sequence bias: summed per token, a sequence only after its prefix.
        let e =
            g(|g| g.sequence_bias = vec![(vec![2], 1.5), (vec![5, 2], -0.25), (vec![4, 0], 9.0)]);
        assert_eq!(run(&e, &[0, 5], &[]), [2.0, -2.0, 2.25, 0.5, -1.0, 3.0]);
        // Forced first token; forced last token at max_length - 1 (after min_length's ban).
        let e = g(|g| g.forced_bos_token_id = Some(4));
        assert_eq!(run(&e, &[0], &[]), [NEG, NEG, NEG, NEG, 0.0, NEG]);
        assert_eq!(run(&e, &[0, 4], &[]), [2.0, -2.0, 1.0, 0.5, -1.0, 3.0]);
        let e = g(|g| {
            g.forced_eos_token_id = vec![1, 3];
            g.max_length = 4;
            g.min_length = 4;
        });
        assert_eq!(run(&e, &[0, 2, 2], &[]), [NEG, 0.0, NEG, 0.0, NEG, NEG]);
        assert_eq!(run(&e, &[0, 2], &[])[1], NEG);
        // Suppressed tokens; at the beginning only (after a forced first token, one later).
        let e = g(|g| {
            g.suppress_tokens = vec![5, 99];
            g.begin_suppress_tokens = vec![0];
        });
        assert_eq!(run(&e, &[0], &[]), [NEG, -2.0, 1.0, 0.5, -1.0, NEG]);
        assert_eq!(run(&e, &[0, 3], &[]), [2.0, -2.0, 1.0, 0.5, -1.0, NEG]);
        let e = g(|g| {
            g.begin_suppress_tokens = vec![0];
            g.forced_bos_token_id = Some(3);
        });
        assert_eq!(run(&e, &[0, 3], &[])[0], NEG);
        // The eos score grows by |score| * (factor^(length - start - 1) - 1) past the start.
        let e = g(|g| g.exponential_decay_length_penalty = Some((2, 1.5)));
        assert_eq!(run(&e, &[0, 3, 3], &[])[1], -2.0);
        assert_eq!(run(&e, &[0, 3, 3, 3], &[])[1], -1.0);
        assert_eq!(run(&e, &[0, 3, 3, 3, 3], &[])[1], 0.5);
        // Invalid values.
        let e = g(|g| g.remove_invalid_values = true);
        let mut s = vec![f32::NAN, f32::INFINITY, NEG, 1.0];
        process(&mut s, &[0], &e, eos, &[]);
        assert_eq!(s, [0.0, f32::MAX, f32::MIN, 1.0]);
    }

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

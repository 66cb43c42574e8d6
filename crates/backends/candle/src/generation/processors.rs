//! The logits processors of one sequence's next-token scores, in the order transformers
//! applies them (`generation/logits_process.py`): penalties, n-gram and bad-word bans,
//! `min_length`, forced and suppressed tokens. When sampling, the warpers (`warpers.rs`) come
//! after them.

use super::Generation;

/// Applies the logits processors to `scores` (logits for greedy search and sampling,
/// log-probabilities for beam search) of a sequence that has `seq` so far (the decoder start
/// token first) and whose input (encoder tokens) is `input`.
pub(super) fn process(scores: &mut [f32], seq: &[u32], g: &Generation, eos: u32, input: &[u32]) {
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

#[cfg(test)]
mod tests {
    use super::*;

    const NEG: f32 = f32::NEG_INFINITY;

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
}

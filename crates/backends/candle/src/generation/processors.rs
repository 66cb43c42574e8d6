//! Adjustments of the next-token scores of one sequence before a token is chosen, in the order
//! transformers applies them.

use super::Generation;

/// Applies the repetition penalty, the n-gram ban and the minimum length to `scores` (logits
/// for greedy search, log-probabilities for beam search) of a sequence that has `seq` so far.
pub(crate) fn process(scores: &mut [f32], seq: &[u32], g: &Generation, eos: u32) {
    if g.repetition_penalty != 1.0 {
        repetition_penalty(scores, seq, g.repetition_penalty);
    }
    if g.no_repeat_ngram_size > 0 {
        ban_repeated_ngrams(scores, seq, g.no_repeat_ngram_size);
    }
    if seq.len() < g.min_length {
        if let Some(s) = scores.get_mut(eos as usize) {
            *s = f32::NEG_INFINITY;
        }
    }
}

/// Makes every token already in `seq` less likely: negative scores are multiplied by the
/// penalty, positive ones divided (CTRL's rule, as transformers has it).
fn repetition_penalty(scores: &mut [f32], seq: &[u32], penalty: f32) {
    let mut seen = vec![false; scores.len()];
    for &t in seq {
        let t = t as usize;
        if t < scores.len() && !seen[t] {
            seen[t] = true;
            let s = scores[t];
            scores[t] = if s < 0.0 { s * penalty } else { s / penalty };
        }
    }
}

/// Forbids every token that would complete an n-gram already present in `seq`.
fn ban_repeated_ngrams(scores: &mut [f32], seq: &[u32], n: usize) {
    if seq.len() < n {
        return;
    }
    let prefix = &seq[seq.len() + 1 - n..];
    for window in seq.windows(n) {
        if &window[..n - 1] == prefix {
            if let Some(s) = scores.get_mut(window[n - 1] as usize) {
                *s = f32::NEG_INFINITY;
            }
        }
    }
}

/// `scores` as log-probabilities.
pub(crate) fn log_softmax(scores: &mut [f32]) {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = scores.iter().map(|&s| f64::from(s - max).exp()).sum();
    let lse = max + sum.ln() as f32;
    for s in scores {
        *s -= lse;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::EarlyStopping;

    fn generation() -> Generation {
        Generation {
            num_beams: 1,
            max_length: 20,
            min_length: 0,
            repetition_penalty: 1.0,
            length_penalty: 1.0,
            early_stopping: EarlyStopping::Heuristic,
            no_repeat_ngram_size: 0,
        }
    }

    #[test]
    fn penalties_and_bans() {
        let mut s = vec![2.0, -2.0, 1.0, 0.5];
        let g = Generation {
            repetition_penalty: 2.0,
            ..generation()
        };
        process(&mut s, &[0, 1, 1], &g, 3);
        assert_eq!(s, vec![1.0, -4.0, 1.0, 0.5]);

        let mut s = vec![0.0; 5];
        let g = Generation {
            no_repeat_ngram_size: 2,
            ..generation()
        };
        // "1 2" appeared after a 1, and the sequence ends in 1: 2 is banned; so is 4 ("1 4").
        process(&mut s, &[1, 2, 3, 1, 4, 1], &g, 0);
        assert_eq!(s[2], f32::NEG_INFINITY);
        assert_eq!(s[4], f32::NEG_INFINITY);
        assert_eq!(s[3], 0.0);

        let mut s = vec![0.0; 3];
        let g = Generation {
            min_length: 3,
            ..generation()
        };
        process(&mut s, &[0, 1], &g, 2);
        assert_eq!(s[2], f32::NEG_INFINITY);
        let mut s = vec![0.0; 3];
        process(&mut s, &[0, 1, 1], &g, 2);
        assert_eq!(s[2], 0.0);
    }

    #[test]
    fn log_softmax_sums_to_one() {
        let mut s = vec![1.0, 2.0, 3.0];
        log_softmax(&mut s);
        let total: f32 = s.iter().map(|x| x.exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
    }
}

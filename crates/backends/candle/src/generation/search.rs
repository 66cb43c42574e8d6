//! Greedy and beam search over a batch of inputs that share the encoder and every decoder step.
//!
//! Beam search follows transformers' vectorised `_beam_search` step for step (the candidates
//! kept, the `-1e9` penalties, the length normalisation and the early-stop heuristic, all in
//! float32) so that the same checkpoint yields the same tokens. Inputs that finish, and inputs
//! whose client left, drop out of the batch; the others go on unchanged.

use candle_core::{Device, Tensor};

use super::processors::{log_softmax, process};
use super::{EarlyStopping, Generation};
use crate::t5::{DecoderState, T5};
use crate::CandleError;

/// transformers' stand-in for minus infinity in beam scores.
const PENALTY: f32 = -1.0e9;

/// Generates an output for each input (token ids ending with end-of-sequence). An output starts
/// with the decoder's start token and ends with end-of-sequence unless it reached `max_length`.
/// `cancelled(i)` is asked before each step; a cancelled input stops and gets `None`.
pub fn generate(
    model: &T5,
    inputs: &[Vec<u32>],
    g: &Generation,
    cancelled: &dyn Fn(usize) -> bool,
) -> Result<Vec<Option<Vec<u32>>>, CandleError> {
    if inputs.is_empty() {
        return Ok(Vec::new());
    }
    if let Some(i) = inputs.iter().position(Vec::is_empty) {
        return Err(CandleError::Invalid(format!("input {i} has no tokens")));
    }
    let vocab = model.config().vocab_size as u32;
    if let Some(t) = inputs.iter().flatten().find(|&&t| t >= vocab) {
        return Err(CandleError::Invalid(format!(
            "token id {t} is outside the vocabulary ({vocab} tokens)"
        )));
    }
    let (ids, mask) = padded(inputs, model.config().pad_token_id, model.device())?;
    let all_gone = || (0..inputs.len()).all(cancelled);
    let Some(encoded) = model.encode_until(&ids, &mask, &all_gone)? else {
        return Ok(vec![None; inputs.len()]);
    };
    let state = model.start(&encoded, &mask)?;
    if g.num_beams == 1 {
        greedy(model, state, inputs.len(), g, cancelled)
    } else {
        beam_search(model, state, inputs.len(), g, cancelled)
    }
}

/// Right-padded ids and the 1/0 mask, (batch, longest).
fn padded(inputs: &[Vec<u32>], pad: u32, device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
    let longest = inputs.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(inputs.len() * longest);
    let mut mask = Vec::with_capacity(inputs.len() * longest);
    for input in inputs {
        ids.extend_from_slice(input);
        ids.extend(std::iter::repeat_n(pad, longest - input.len()));
        mask.extend(std::iter::repeat_n(1u8, input.len()));
        mask.extend(std::iter::repeat_n(0u8, longest - input.len()));
    }
    Ok((
        Tensor::from_vec(ids, (inputs.len(), longest), device)?,
        Tensor::from_vec(mask, (inputs.len(), longest), device)?,
    ))
}

/// One decoder step for `last` (a token per row); the logits as rows of f32.
fn step(model: &T5, last: &[u32], state: &mut DecoderState) -> Result<Vec<Vec<f32>>, CandleError> {
    let ids = Tensor::new(last, model.device())?;
    Ok(model.step(&ids, state)?.to_vec2::<f32>()?)
}

fn greedy(
    model: &T5,
    mut state: DecoderState,
    n: usize,
    g: &Generation,
    cancelled: &dyn Fn(usize) -> bool,
) -> Result<Vec<Option<Vec<u32>>>, CandleError> {
    let c = model.config();
    let mut seqs: Vec<Vec<u32>> = vec![vec![c.decoder_start_token_id]; n];
    let mut out: Vec<Option<Vec<u32>>> = vec![None; n];
    // Inputs still generating, in the order of the decoder batch's rows.
    let mut active: Vec<usize> = (0..n).collect();
    while !active.is_empty() {
        let last: Vec<u32> = active
            .iter()
            .map(|&i| *seqs[i].last().unwrap_or(&0))
            .collect();
        let logits = step(model, &last, &mut state)?;
        let mut keep = Vec::with_capacity(active.len());
        for (row, (&i, mut scores)) in active.iter().zip(logits).enumerate() {
            process(&mut scores, &seqs[i], g, c.eos_token_id);
            let token = argmax(&scores);
            seqs[i].push(token);
            if token == c.eos_token_id || seqs[i].len() >= g.max_length {
                out[i] = Some(std::mem::take(&mut seqs[i]));
            } else if cancelled(i) {
                stopped(seqs[i].len(), g);
            } else {
                keep.push(row);
            }
        }
        if keep.len() < active.len() {
            state = state.select(&keep.iter().map(|&r| r as u32).collect::<Vec<_>>())?;
            active = keep.iter().map(|&r| active[r]).collect();
        }
    }
    Ok(out)
}

/// Says that an input left the batch because its client went away.
fn stopped(tokens: usize, g: &Generation) {
    tracing::info!(
        tokens,
        max_length = g.max_length,
        "text generation stopped early: nobody waits for it"
    );
}

/// The first index of the largest score (torch's argmax).
fn argmax(scores: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &s) in scores.iter().enumerate() {
        if s > scores[best] {
            best = i;
        }
    }
    best as u32
}

/// The beams of one input.
struct Beams {
    input: usize,
    running: Vec<Vec<u32>>,
    running_scores: Vec<f32>,
    /// Best finished hypotheses: sequence, normalised score, and whether it is a real one (the
    /// list starts with placeholders scored [`PENALTY`]).
    finished: Vec<(Vec<u32>, f32, bool)>,
    improvable: bool,
}

fn beam_search(
    model: &T5,
    state: DecoderState,
    n: usize,
    g: &Generation,
    cancelled: &dyn Fn(usize) -> bool,
) -> Result<Vec<Option<Vec<u32>>>, CandleError> {
    let c = model.config();
    let nb = g.num_beams;
    let start = vec![c.decoder_start_token_id];
    let mut groups: Vec<Beams> = (0..n)
        .map(|input| Beams {
            input,
            running: vec![start.clone(); nb],
            // Only the first beam is live at first, or the same continuation would fill them all.
            running_scores: (0..nb)
                .map(|b| if b == 0 { 0.0 } else { PENALTY })
                .collect(),
            finished: vec![(start.clone(), PENALTY, false); nb],
            improvable: true,
        })
        .collect();
    let rows: Vec<u32> = (0..n as u32)
        .flat_map(|i| std::iter::repeat_n(i, nb))
        .collect();
    let mut state = state.select(&rows)?;
    let mut out: Vec<Option<Vec<u32>>> = vec![None; n];
    // One eos token: transformers keeps max(2, 1 + eos tokens) * beams candidates.
    let keep_candidates = 2 * nb;
    let mut cur_len = 1;
    while !groups.is_empty() {
        let last: Vec<u32> = groups
            .iter()
            .flat_map(|b| b.running.iter().map(|s| *s.last().unwrap_or(&0)))
            .collect();
        let logits = step(model, &last, &mut state)?;
        let mut reorder: Vec<u32> = Vec::with_capacity(last.len());
        let mut next_groups = Vec::with_capacity(groups.len());
        for (gi, (mut beams, rows)) in groups.into_iter().zip(logits.chunks(nb)).enumerate() {
            let vocab = rows[0].len();
            let mut flat: Vec<f32> = Vec::with_capacity(nb * vocab);
            for (b, row) in rows.iter().enumerate() {
                let mut lp = row.clone();
                log_softmax(&mut lp);
                process(&mut lp, &beams.running[b], g, c.eos_token_id);
                flat.extend(lp.iter().map(|&s| s + beams.running_scores[b]));
            }
            let top = top_k(&flat, keep_candidates);
            let candidates: Vec<(Vec<u32>, f32, bool)> = top
                .iter()
                .map(|&(score, index)| {
                    let (beam, token) = (index / vocab, (index % vocab) as u32);
                    let mut seq = beams.running[beam].clone();
                    seq.push(token);
                    let hit = token == c.eos_token_id || seq.len() >= g.max_length;
                    (seq, score, hit)
                })
                .collect();
            // Next running beams: the best candidates that did not stop.
            let running_values: Vec<f32> = candidates
                .iter()
                .map(|(_, s, hit)| if *hit { s + PENALTY } else { *s })
                .collect();
            let chosen = top_k(&running_values, nb);
            let base = (gi * nb) as u32;
            // Finished hypotheses: the best of those kept so far and the top beams that stopped.
            let denominator = ((cur_len + 1 - 1) as f64).powf(f64::from(g.length_penalty)) as f32;
            let full =
                g.early_stopping == EarlyStopping::Always && beams.finished.iter().all(|f| f.2);
            let mut merged = std::mem::take(&mut beams.finished);
            for (k, (seq, score, hit)) in candidates.iter().enumerate() {
                let did_finish = *hit && k < nb;
                let mut s = score / denominator;
                if full {
                    s += PENALTY;
                }
                if !beams.improvable {
                    s += PENALTY;
                }
                if !did_finish {
                    s += PENALTY;
                }
                merged.push((seq.clone(), s, did_finish));
            }
            let merged_scores: Vec<f32> = merged.iter().map(|m| m.1).collect();
            beams.finished = top_k(&merged_scores, nb)
                .into_iter()
                .map(|(_, i)| merged[i].clone())
                .collect();
            beams.running = chosen
                .iter()
                .map(|&(_, k)| candidates[k].0.clone())
                .collect();
            beams.running_scores = chosen.iter().map(|&(v, _)| v).collect();
            let all_hit = candidates.iter().all(|c| c.2);
            // The early-stop heuristic, at the new length.
            let best_length = if g.early_stopping == EarlyStopping::Never && g.length_penalty > 0.0
            {
                g.max_length - 1
            } else {
                cur_len + 1 - 1
            };
            let best_possible = beams.running_scores[0]
                / (best_length as f64).powf(f64::from(g.length_penalty)) as f32;
            let worst = beams
                .finished
                .iter()
                .map(|f| f.1)
                .fold(f32::INFINITY, f32::min);
            beams.improvable &= beams
                .finished
                .iter()
                .any(|f| best_possible > if f.2 { worst } else { PENALTY });
            let all_finished = beams.finished.iter().all(|f| f.2);
            let open = !(all_finished && g.early_stopping == EarlyStopping::Always);
            if !(beams.improvable && open && !all_hit) {
                out[beams.input] = beams.finished.into_iter().next().map(|f| f.0);
            } else if cancelled(beams.input) {
                stopped(cur_len + 1, g);
            } else {
                reorder.extend(
                    chosen
                        .iter()
                        .map(|&(_, k)| base + (top[k].1 / vocab) as u32),
                );
                next_groups.push(beams);
            }
        }
        state = state.select(&reorder)?;
        groups = next_groups;
        cur_len += 1;
    }
    Ok(out)
}

/// The `k` largest values with their indices, largest first; ties go to the lower index.
fn top_k(values: &[f32], k: usize) -> Vec<(f32, usize)> {
    let mut indexed: Vec<(f32, usize)> = values.iter().copied().zip(0..).collect();
    let order = |a: &(f32, usize), b: &(f32, usize)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    let k = k.min(indexed.len());
    if k < indexed.len() && k > 0 {
        indexed.select_nth_unstable_by(k - 1, order);
    }
    indexed.truncate(k);
    indexed.sort_by(order);
    indexed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_is_sorted_and_stable() {
        let v = [1.0, 3.0, 3.0, -1.0, 2.0];
        assert_eq!(top_k(&v, 3), vec![(3.0, 1), (3.0, 2), (2.0, 4)]);
        assert_eq!(top_k(&v, 9).len(), 5);
    }
}

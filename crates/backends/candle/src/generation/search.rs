//! Greedy search, sampling and beam search (with or without sampling) over a batch of inputs
//! that share the encoder and every decoder step.
//!
//! Beam search follows transformers' vectorised `_beam_search` step for step (the candidates
//! kept, the `-1e9` penalties, the length normalisation and the early-stop heuristic, all in
//! float32) so that the same checkpoint yields the same tokens. Sampling follows `_sample` (and
//! `_beam_search` with `do_sample`): the processed scores go through the logits warpers, then a
//! multinomial draw; each input has its own random generator, seeded with the request's `seed`
//! (or a random seed), so its output does not depend on its batch. The draws are ferroserve's
//! own (ChaCha8), not torch's: the same seed gives the same tokens here, not the tokens
//! transformers gives. Inputs that finish, and inputs whose client left, drop out of the batch;
//! the others go on unchanged.

use std::time::Instant;

use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::choice::{argmax, sample, sample_without_replacement, top_k};
use super::processors::process;
use super::softmax::log_softmax;
use super::warpers::warp;
use super::{EarlyStopping, Generation};
use crate::t5::{DecoderState, T5};
use crate::CandleError;

/// transformers' stand-in for minus infinity in beam scores.
const PENALTY: f32 = -1.0e9;

/// What every step of one generation needs besides the decoder.
struct Run<'a> {
    inputs: &'a [Vec<u32>],
    g: &'a Generation,
    eos: u32,
    /// One generator per input when sampling; empty otherwise.
    rngs: Vec<ChaCha8Rng>,
    /// When `max_time` runs out.
    deadline: Option<Instant>,
    listener: &'a dyn Listener,
}

impl Run<'_> {
    fn out_of_time(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() > d)
    }
}

/// Who follows a generation: whether an input's client has gone, and (for clients that stream)
/// each input's tokens as they come. Any `Fn(usize) -> bool` is a listener that only answers
/// the first question.
pub trait Listener {
    /// Whether nobody waits any more for input `i`'s output (asked after each step).
    fn cancelled(&self, i: usize) -> bool;

    /// Input `i`'s tokens so far, after each step of greedy search and sampling (beam search
    /// knows its tokens only at the end, so its outputs come whole).
    fn tokens(&self, i: usize, tokens: &[u32]) {
        let _ = (i, tokens);
    }
}

impl<F: Fn(usize) -> bool> Listener for F {
    fn cancelled(&self, i: usize) -> bool {
        self(i)
    }
}

/// Generates an output for each input (token ids ending with end-of-sequence). An output starts
/// with the decoder's start token and ends with end-of-sequence unless it reached `max_length`
/// (or `max_time` ran out). `listener.cancelled(i)` is asked before each step; a cancelled input
/// stops and gets `None`.
pub fn generate(
    model: &T5,
    inputs: &[Vec<u32>],
    g: &Generation,
    listener: &dyn Listener,
) -> Result<Vec<Option<Vec<u32>>>, CandleError> {
    // transformers' MaxTimeCriteria starts its clock before the encoder runs.
    let deadline = g.max_time.and_then(|t| Instant::now().checked_add(t));
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
    check_token_ids(g, vocab)?;
    let rngs = match &g.sampling {
        None => Vec::new(),
        Some(s) => inputs
            .iter()
            .map(|_| ChaCha8Rng::seed_from_u64(s.seed.unwrap_or_else(rand::random)))
            .collect(),
    };
    let (ids, mask) = padded(inputs, model.config().pad_token_id, model.device())?;
    let all_gone = || (0..inputs.len()).all(|i| listener.cancelled(i));
    let Some(encoded) = model.encode_until(&ids, &mask, &all_gone)? else {
        return Ok(vec![None; inputs.len()]);
    };
    let state = model.start(&encoded, &mask)?;
    let mut run = Run {
        inputs,
        g,
        eos: model.config().eos_token_id,
        rngs,
        deadline,
        listener,
    };
    if g.num_beams == 1 {
        one_beam(model, state, &mut run)
    } else {
        beam_search(model, state, &mut run)
    }
}

/// The token ids of the parameters must be in the vocabulary, as transformers requires (it
/// ignores suppressed tokens outside it, and so does this).
fn check_token_ids(g: &Generation, vocab: u32) -> Result<(), CandleError> {
    let lists: [(&str, Vec<u32>); 4] = [
        (
            "forced_bos_token_id",
            g.forced_bos_token_id.into_iter().collect(),
        ),
        ("forced_eos_token_id", g.forced_eos_token_id.clone()),
        (
            "bad_words_ids",
            g.bad_words_ids.iter().flatten().copied().collect(),
        ),
        (
            "sequence_bias",
            g.sequence_bias
                .iter()
                .flat_map(|(ids, _)| ids.iter().copied())
                .collect(),
        ),
    ];
    for (name, ids) in lists {
        if let Some(t) = ids.iter().find(|&&t| t >= vocab) {
            return Err(CandleError::Invalid(format!(
                "{name}: token id {t} is outside the vocabulary ({vocab} tokens)"
            )));
        }
    }
    Ok(())
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

/// Greedy search, or multinomial sampling when `do_sample` is set (transformers' `_sample`).
fn one_beam(
    model: &T5,
    mut state: DecoderState,
    run: &mut Run<'_>,
) -> Result<Vec<Option<Vec<u32>>>, CandleError> {
    let (g, n) = (run.g, run.inputs.len());
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
        let out_of_time = run.out_of_time();
        let mut keep = Vec::with_capacity(active.len());
        for (row, (&i, mut scores)) in active.iter().zip(logits).enumerate() {
            process(&mut scores, &seqs[i], g, run.eos, &run.inputs[i]);
            // `renormalize_logits` would change neither the best token nor the distribution.
            let token = match (&g.sampling, run.rngs.get_mut(i)) {
                (Some(s), Some(rng)) => {
                    warp(&mut scores, s, 1);
                    sample(&scores, rng)
                }
                _ => argmax(&scores),
            };
            seqs[i].push(token);
            run.listener.tokens(i, &seqs[i]);
            if token == run.eos || seqs[i].len() >= g.max_length || out_of_time {
                out[i] = Some(std::mem::take(&mut seqs[i]));
            } else if run.listener.cancelled(i) {
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

/// Beam search, or beam sampling when `do_sample` is set (transformers' `_beam_search`).
fn beam_search(
    model: &T5,
    state: DecoderState,
    run: &mut Run<'_>,
) -> Result<Vec<Option<Vec<u32>>>, CandleError> {
    let (g, n, eos) = (run.g, run.inputs.len(), run.eos);
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
        let out_of_time = run.out_of_time();
        let mut reorder: Vec<u32> = Vec::with_capacity(last.len());
        let mut next_groups = Vec::with_capacity(groups.len());
        for (gi, (mut beams, rows)) in groups.into_iter().zip(logits.chunks(nb)).enumerate() {
            let vocab = rows[0].len();
            let mut flat: Vec<f32> = Vec::with_capacity(nb * vocab);
            let input = &run.inputs[beams.input];
            for (b, row) in rows.iter().enumerate() {
                let mut lp = row.clone();
                log_softmax(&mut lp);
                process(&mut lp, &beams.running[b], g, eos, input);
                if let Some(s) = &g.sampling {
                    // One eos token: transformers keeps at least 2 tokens per beam.
                    warp(&mut lp, s, 2);
                }
                if g.renormalize_logits {
                    log_softmax(&mut lp);
                }
                flat.extend(lp.iter().map(|&s| s + beams.running_scores[b]));
            }
            // The candidates: the best, or drawn from the softmax of the accumulated scores.
            let top = match (&g.sampling, run.rngs.get_mut(beams.input)) {
                (Some(_), Some(rng)) => sample_without_replacement(&flat, keep_candidates, rng),
                _ => top_k(&flat, keep_candidates),
            };
            let candidates: Vec<(Vec<u32>, f32, bool)> = top
                .iter()
                .map(|&(score, index)| {
                    let (beam, token) = (index / vocab, (index % vocab) as u32);
                    let mut seq = beams.running[beam].clone();
                    seq.push(token);
                    let hit = token == eos || seq.len() >= g.max_length || out_of_time;
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
            } else if run.listener.cancelled(beams.input) {
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

//! The [`Backend`] of a text-to-text (T5-family) checkpoint.

use std::path::Path;

use candle_core::Device;
use ferroserve_core::{
    Backend, DataType, Error, NamedTensor, Partial, Result, RunContext, Signature, TensorSpec,
};

use crate::generation::{generate, GenerationDefaults, GenerationParams, Listener};
use crate::t5::T5;
use crate::tensors::{input, int64, int_rows, token};
use crate::CandleError;

/// Input: token ids, (batch, length), padded with anything where `attention_mask` is 0.
pub const INPUT_IDS: &str = "input_ids";
/// Input: 1 for tokens, 0 for padding.
pub const ATTENTION_MASK: &str = "attention_mask";
/// Output: generated ids, (batch, length), each starting with the decoder start token; shorter
/// outputs are padded with the pad token.
pub const OUTPUT_IDS: &str = "output_ids";

/// A replica of a T5-family checkpoint that generates text with greedy search, sampling or beam
/// search (with or without sampling); the request's parameters (transformers' `generate` ones,
/// see [`GenerationParams`]) choose how.
pub struct Seq2SeqBackend {
    model: T5,
    defaults: GenerationDefaults,
    signature: Signature,
}

impl Seq2SeqBackend {
    /// Loads the checkpoint in `dir` on `device`. `overrides` (from model.yaml) win over its
    /// `generation_config.json`; requests may ask for at most `max_length_limit` tokens
    /// (default: the checkpoint's `n_positions`, else 512).
    pub fn load(
        dir: &Path,
        device: &Device,
        overrides: &GenerationParams,
        max_length_limit: Option<usize>,
    ) -> Result<Self, CandleError> {
        let model = T5::load(dir, device)?;
        let limit = max_length_limit
            .or(model.config().n_positions)
            .unwrap_or(512);
        let defaults = GenerationDefaults::load(dir, overrides, limit)?;
        let ids = |name: &str| TensorSpec {
            name: name.to_string(),
            datatype: DataType::Int64,
            shape: vec![-1, -1],
        };
        let signature = Signature {
            inputs: vec![ids(INPUT_IDS), ids(ATTENTION_MASK)],
            outputs: vec![ids(OUTPUT_IDS)],
        };
        Ok(Self {
            model,
            defaults,
            signature,
        })
    }
}

impl Backend for Seq2SeqBackend {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn run(&mut self, inputs: &[NamedTensor], outputs: &[String]) -> Result<Vec<NamedTensor>> {
        self.run_with(inputs, outputs, &RunContext::detached())
    }

    fn run_with(
        &mut self,
        inputs: &[NamedTensor],
        _outputs: &[String],
        context: &RunContext<'_>,
    ) -> Result<Vec<NamedTensor>> {
        let params = GenerationParams::from_parameters(context.parameters())?;
        let generation = self.defaults.resolve(&params)?;
        let ids = int_rows(input(inputs, INPUT_IDS)?, INPUT_IDS)?;
        let mask = int_rows(input(inputs, ATTENTION_MASK)?, ATTENTION_MASK)?;
        if ids.len() != mask.len() || ids.iter().zip(&mask).any(|(a, b)| a.len() != b.len()) {
            return Err(Error::invalid(format!(
                "'{INPUT_IDS}' and '{ATTENTION_MASK}' must have the same shape"
            )));
        }
        let mut texts = Vec::with_capacity(ids.len());
        for (row, (ids, mask)) in ids.iter().zip(&mask).enumerate() {
            let tokens = ids
                .iter()
                .zip(mask)
                .filter(|(_, &m)| m != 0)
                .map(|(&t, _)| token(t, INPUT_IDS))
                .collect::<Result<Vec<u32>>>()?;
            if tokens.is_empty() {
                return Err(Error::invalid(format!(
                    "row {row} of '{INPUT_IDS}' has no tokens (its attention_mask is all 0)"
                )));
            }
            texts.push(tokens);
        }
        let generated = generate(&self.model, &texts, &generation, &Following(context))?;
        let pad = i64::from(self.model.config().pad_token_id);
        let width = generated.iter().flatten().map(Vec::len).max().unwrap_or(0);
        let rows: Vec<Vec<i64>> = generated
            .iter()
            .map(|g| {
                let mut row: Vec<i64> = g.iter().flatten().map(|&t| i64::from(t)).collect();
                row.resize(width, pad);
                row
            })
            .collect();
        Ok(vec![int64(OUTPUT_IDS, &rows)?])
    }
}

/// A generation followed by the batch's clients: cancelled when they leave, told each token
/// when they stream.
struct Following<'a, 'b>(&'a RunContext<'b>);

impl Listener for Following<'_, '_> {
    fn cancelled(&self, row: usize) -> bool {
        self.0.is_cancelled(row)
    }

    fn tokens(&self, row: usize, tokens: &[u32]) {
        if self.0.streams(row) {
            self.0.report(row, Partial::Tokens(tokens.to_vec()));
        }
    }
}

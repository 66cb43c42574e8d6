//! Text generation for encoder-decoder models: parameters, score processors and warpers,
//! greedy search, sampling and beam search.
//!
//! - `params`: what a request may set, and the checkpoint's defaults it is resolved over;
//!   `unsupported`: transformers' parameters that are refused, and why.
//! - `settings`: the checked settings of one generation, within their bounds.
//! - `processors`: the logits processors (penalties, bans, forced and suppressed tokens);
//!   `warpers`: the sampling warpers; `softmax`: scores as (log-)probabilities.
//! - `choice`: the next tokens, the best ones or drawn at random.
//! - `search`: greedy search, sampling and beam search over a batch.

mod choice;
mod params;
mod processors;
mod search;
mod settings;
mod softmax;
mod unsupported;
mod warpers;

pub use params::{EarlyStopping, GenerationDefaults, GenerationParams, TokenIds, NAMES};
pub use search::{generate, Listener};
pub use settings::{Generation, Sampling, MAX_BEAMS, MAX_NGRAM};
pub use unsupported::{Unsupported, UNSUPPORTED};

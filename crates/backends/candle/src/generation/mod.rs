//! Text generation for encoder-decoder models: parameters, score processors and warpers,
//! greedy search, sampling and beam search.

mod params;
mod processors;
mod search;

pub use params::{
    EarlyStopping, Generation, GenerationDefaults, GenerationParams, Sampling, TokenIds,
    Unsupported, MAX_BEAMS, MAX_NGRAM, NAMES, UNSUPPORTED,
};
pub use search::{generate, Listener};

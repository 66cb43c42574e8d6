//! Text generation for encoder-decoder models: parameters, score processors, greedy and beam
//! search.

mod params;
mod processors;
mod search;

pub use params::{
    EarlyStopping, Generation, GenerationDefaults, GenerationParams, MAX_BEAMS, MAX_NGRAM, NAMES,
};
pub use search::generate;

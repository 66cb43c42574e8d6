//! The parameters of transformers' `generate` that ferroserve does not implement: each is
//! refused with a sentence saying why, unless given at a value that changes nothing.

use serde_json::{Map, Value};

/// A parameter of transformers' `generate` (or its `GenerationConfig`) that ferroserve does
/// not implement.
#[derive(Debug, Clone, Copy)]
pub struct Unsupported {
    /// The parameter.
    pub name: &'static str,
    /// Values (JSON) that change nothing and are therefore accepted; `null` always is.
    pub accepted: &'static [&'static str],
    /// Why not, and what to do instead.
    pub why: &'static str,
}

const fn no(
    name: &'static str,
    accepted: &'static [&'static str],
    why: &'static str,
) -> Unsupported {
    Unsupported {
        name,
        accepted,
        why,
    }
}

const OUTPUTS: &str = "the answer is the generated text; scores, logits, attentions and hidden states are not returned";
const ASSISTED: &str = "assisted (speculative) generation is not implemented";
const CODE: &str = "it takes Python code, which a request cannot carry";
const TOKEN_IDS: &str = "the token ids of the checkpoint's config.json are used";
const CACHE: &str = "the decoder always uses ferroserve's own key/value cache";
const GUIDANCE: &str = "classifier-free guidance of text generation (a second, unconditional decoder pass per step) is not implemented";
const CONSTRAINED: &str = "constrained beam search has left transformers for the Hub (custom_generate); bad_words_ids and sequence_bias steer the output instead";
const TEXT: &str = "the task tokenises the request's text itself";
const DECODER_PROMPT: &str =
    "a decoder prompt is not supported: every output starts with the decoder start token alone";

/// Every other parameter transformers' `generate` accepts for an encoder-decoder model (its
/// arguments, `GenerationConfig`'s fields and the model inputs it passes on), each with the
/// reason it is refused. The one place these are listed.
pub const UNSUPPORTED: &[Unsupported] = &[
    // Decoding strategies transformers moved to the Hub, or that do not fit this model.
    no("num_beam_groups", &["1"], "group (diverse) beam search has left transformers for the Hub (custom_generate); use num_beams, or do_sample for varied outputs"),
    no("diversity_penalty", &["0"], "it belongs to group beam search (num_beam_groups), which is not implemented"),
    no("penalty_alpha", &["0"], "contrastive search has left transformers for the Hub (custom_generate); use greedy or beam search, or do_sample"),
    no("low_memory", &["false"], "it belongs to contrastive search (penalty_alpha), which is not implemented"),
    no("dola_layers", &[], "DoLa decoding is for decoder-only models"),
    no("constraints", &[], CONSTRAINED),
    no("force_words_ids", &[], CONSTRAINED),
    no("guidance_scale", &["1"], GUIDANCE),
    no("negative_prompt_ids", &[], GUIDANCE),
    no("negative_prompt_attention_mask", &[], GUIDANCE),
    no("watermarking_config", &[], "watermarking is not implemented"),
    no("token_healing", &["false"], "token healing re-tokenises a decoder-only model's prompt; a text-to-text model has none"),
    no("stop_strings", &[], "stopping at a string needs the tokenizer inside the decoding loop; use max_new_tokens, or cut the text afterwards"),
    // What comes back.
    no("num_return_sequences", &["1"], "one output comes back per input; send the input again (with another seed) for more samples"),
    no("output_scores", &["false"], OUTPUTS),
    no("output_logits", &["false"], OUTPUTS),
    no("output_attentions", &["false"], OUTPUTS),
    no("output_hidden_states", &["false"], OUTPUTS),
    no("return_dict_in_generate", &["false"], OUTPUTS),
    no("streamer", &[], "the answer comes whole, not streamed"),
    // Special tokens.
    no("pad_token_id", &[], TOKEN_IDS),
    no("bos_token_id", &[], TOKEN_IDS),
    no("eos_token_id", &[], TOKEN_IDS),
    no("decoder_start_token_id", &[], TOKEN_IDS),
    // How the work is done: these change no output.
    no("use_cache", &["true", "false"], "the output is the same with or without a cache (ferroserve always uses one)"),
    no("disable_compile", &["true", "false"], "the model is never compiled, so there is nothing to disable"),
    no("cache_implementation", &[], CACHE),
    no("cache_config", &[], CACHE),
    no("max_cache_len", &[], CACHE),
    no("prefill_chunk_size", &[], "prefill chunking is for decoder-only prompts; the encoder reads the whole input at once"),
    no("compile_config", &[], "the model is not compiled (torch.compile has no counterpart here)"),
    no("continuous_batching_config", &[], "requests are batched by the server (dynamic_batching in model.yaml)"),
    no("synced_gpus", &["false"], "it is for DeepSpeed ZeRO-3 / FSDP runs over several GPUs; each replica generates on its own device"),
    // Assisted generation.
    no("assistant_model", &[], ASSISTED),
    no("assistant_tokenizer", &[], ASSISTED),
    no("is_assistant", &["false"], ASSISTED),
    no("num_assistant_tokens", &[], ASSISTED),
    no("num_assistant_tokens_schedule", &[], ASSISTED),
    no("assistant_confidence_threshold", &[], ASSISTED),
    no("assistant_early_exit", &[], ASSISTED),
    no("assistant_lookbehind", &[], ASSISTED),
    no("target_lookbehind", &[], ASSISTED),
    no("assistant_ensemble_weight", &[], ASSISTED),
    no("prompt_lookup_num_tokens", &[], ASSISTED),
    no("max_matching_ngram_size", &[], ASSISTED),
    no("speculation_type", &[], ASSISTED),
    no("use_mtp", &["false"], ASSISTED),
    // Arguments that are Python objects or code.
    no("generation_config", &[], "give its fields as parameters of their own"),
    no("logits_processor", &[], CODE),
    no("stopping_criteria", &[], CODE),
    no("prefix_allowed_tokens_fn", &[], CODE),
    no("custom_generate", &[], CODE),
    no("trust_remote_code", &[], CODE),
    no("tokenizer", &[], TEXT),
    // Model inputs `generate` passes on.
    no("inputs", &[], TEXT),
    no("input_ids", &[], TEXT),
    no("attention_mask", &[], TEXT),
    no("encoder_outputs", &[], "the encoder runs on the request's text"),
    no("decoder_input_ids", &[], DECODER_PROMPT),
    no("decoder_attention_mask", &[], DECODER_PROMPT),
];

/// The refusal of `name`, if it is one of [`UNSUPPORTED`] given at a value that would change
/// something.
pub(super) fn refusal(name: &str, value: &Value) -> Option<String> {
    let entry = UNSUPPORTED.iter().find(|u| u.name == name)?;
    let same = |literal: &&str| match (serde_json::from_str::<Value>(literal), value) {
        (Ok(Value::Number(a)), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Ok(a), b) => &a == b,
        (Err(_), _) => false,
    };
    if value.is_null() || entry.accepted.iter().any(same) {
        return None;
    }
    let mut message = format!(
        "'{name}' is a transformers generate parameter that ferroserve does not support: {}",
        entry.why
    );
    if !entry.accepted.is_empty() {
        message.push_str(&format!(" (accepted: {})", entry.accepted.join(" or ")));
    }
    Some(message)
}

/// Takes out of `map` the transformers parameters given at values that change nothing; any
/// other one is an error that says why it is not supported.
pub(super) fn screen(map: &mut Map<String, Value>) -> Result<(), String> {
    let mut harmless = Vec::new();
    for (k, v) in map.iter() {
        if UNSUPPORTED.iter().any(|u| u.name == k) {
            match refusal(k, v) {
                Some(message) => return Err(message),
                None => harmless.push(k.clone()),
            }
        }
    }
    for k in harmless {
        map.remove(&k);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Each parameter once; its accepted values are accepted, and others refused.
    #[test]
    fn the_table_agrees_with_itself() {
        let mut seen = std::collections::HashSet::new();
        for u in UNSUPPORTED {
            assert!(seen.insert(u.name), "{} twice", u.name);
            for literal in u.accepted {
                let v: Value = serde_json::from_str(literal).unwrap();
                assert!(refusal(u.name, &v).is_none(), "{}: {literal}", u.name);
            }
            // A value that does change something.
            assert!(refusal(u.name, &json!("something")).is_some(), "{}", u.name);
        }
    }
}

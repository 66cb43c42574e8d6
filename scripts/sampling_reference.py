"""Reference numbers for ferroserve's sampling warpers, from transformers' own logits warpers.

Run with a Python that has torch and transformers (5.23 was used):

    python scripts/sampling_reference.py

Each line printed is `name: [scores after the warper]` as a Rust array of f32 (`NEG` is minus
infinity); crates/backends/candle/src/generation/warpers.rs pastes them into its tests.

Then, for the other logits processors (deterministic, so the token ids must match exactly), it
prints `generate(**kwargs)` on the tiny-t5 fixture for two texts:
crates/backends/candle/tests/t5_sampling.rs pastes those.
"""

import json
import pathlib

import numpy
import torch
from transformers import AutoTokenizer, T5ForConditionalGeneration
from transformers.generation.logits_process import (
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    LogitsProcessorList,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopHLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

NEG = float("-inf")
# The logit vectors of the tests (`V1` to `V4` and `TIES` in warpers.rs).
V1 = [2.0, -1.0, 0.5, 3.5, 0.0, 1.25, -2.5, 3.0]
V2 = [NEG, 1.0, 4.0, 2.0, 2.5, -0.5, 0.25, NEG, 3.25, 1.5]
V3 = [10.0, 1.0, 0.5, 0.2, -1.0, 0.3]
TIES = [1.0, 2.0, 2.0, 3.0, 0.5]
V4 = [4.0, 3.0, 3.1, 2.9, 3.05, 2.95, 0.0, -1.0]

CASES = [
    ("temperature_0_7_v1", V1, [TemperatureLogitsWarper(0.7)]),
    ("temperature_1_3_v2", V2, [TemperatureLogitsWarper(1.3)]),
    ("top_k_3_v1", V1, [TopKLogitsWarper(3)]),
    ("top_k_1_v2", V2, [TopKLogitsWarper(1)]),
    ("top_k_2_keep_4_v1", V1, [TopKLogitsWarper(2, min_tokens_to_keep=4)]),
    ("top_k_2_ties", TIES, [TopKLogitsWarper(2)]),
    ("top_p_0_8_v1", V1, [TopPLogitsWarper(0.8)]),
    ("top_p_0_5_v2", V2, [TopPLogitsWarper(0.5)]),
    ("top_p_0_3_keep_3_v1", V1, [TopPLogitsWarper(0.3, min_tokens_to_keep=3)]),
    ("min_p_0_1_v1", V1, [MinPLogitsWarper(0.1)]),
    ("min_p_0_3_v2", V2, [MinPLogitsWarper(0.3)]),
    ("min_p_0_9_keep_2_v3", V3, [MinPLogitsWarper(0.9, min_tokens_to_keep=2)]),
    ("typical_0_9_v1", V1, [TypicalLogitsWarper(0.9)]),
    ("typical_0_5_v2", V2, [TypicalLogitsWarper(0.5)]),
    ("typical_0_2_v3", V3, [TypicalLogitsWarper(0.2)]),
    ("typical_0_2_keep_2_v3", V3, [TypicalLogitsWarper(0.2, min_tokens_to_keep=2)]),
    # Typical sampling drops the most likely token here.
    ("typical_0_3_v4", V4, [TypicalLogitsWarper(0.3)]),
    ("typical_0_5_v4", V4, [TypicalLogitsWarper(0.5)]),
    ("epsilon_0_05_v1", V1, [EpsilonLogitsWarper(0.05)]),
    ("epsilon_0_5_keep_2_v2", V2, [EpsilonLogitsWarper(0.5, min_tokens_to_keep=2)]),
    ("epsilon_0_2_v4", V4, [EpsilonLogitsWarper(0.2)]),
    ("eta_0_05_v1", V1, [EtaLogitsWarper(0.05)]),
    ("eta_0_2_v4", V4, [EtaLogitsWarper(0.2)]),
    ("eta_0_3_v3", V3, [EtaLogitsWarper(0.3)]),
    ("top_h_0_4_v1", V1, [TopHLogitsWarper(0.4)]),
    ("top_h_0_9_v2", V2, [TopHLogitsWarper(0.9)]),
    ("top_h_0_5_v4", V4, [TopHLogitsWarper(0.5)]),
    # The order transformers' `_get_logits_processor` builds them in.
    (
        "chain_t0_7_k5_p0_9_v1",
        V1,
        [TemperatureLogitsWarper(0.7), TopKLogitsWarper(5), TopPLogitsWarper(0.9)],
    ),
    (
        "chain_t1_5_k6_p0_95_minp0_05_typ0_9_v2",
        V2,
        [
            TemperatureLogitsWarper(1.5),
            TopKLogitsWarper(6),
            TopPLogitsWarper(0.95),
            MinPLogitsWarper(0.05),
            TypicalLogitsWarper(0.9),
        ],
    ),
]


def rust(values):
    # numpy prints a float32 with the fewest digits that read back to it, as Rust does.
    return "[" + ", ".join("NEG" if v == NEG else str(numpy.float32(v)) for v in values) + "]"


for name, logits, warpers in CASES:
    scores = torch.tensor([logits], dtype=torch.float32)
    out = LogitsProcessorList(warpers)(torch.zeros((1, 1), dtype=torch.long), scores)
    print(f"{name}: {rust(out[0].tolist())}")


FIXTURE = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/models/tiny-t5"
TEXTS = [
    "Men have landed and walked on the moon.",
    "Readability counts, and errors should never pass silently.",
]
GENERATE_CASES = [
    {"max_length": 16, "forced_bos_token_id": 5, "forced_eos_token_id": 2},
    {"max_length": 16, "suppress_tokens": [3, 9], "begin_suppress_tokens": [27]},
    {"max_length": 16, "bad_words_ids": [[3], [27, 9]], "num_beams": 2},
    {"max_length": 16, "sequence_bias": [[[3], -5.0], [[9, 3], 2.0], [[27], 1.5]]},
    {"max_length": 16, "encoder_repetition_penalty": 1.5},
    {"max_length": 16, "encoder_no_repeat_ngram_size": 2, "num_beams": 3},
    {"max_length": 16, "exponential_decay_length_penalty": [3, 1.6], "min_length": 6},
    {"max_length": 16, "num_beams": 3, "renormalize_logits": True, "repetition_penalty": 2.0},
    {"max_length": 16, "num_beams": 2, "remove_invalid_values": True, "no_repeat_ngram_size": 1},
]

model = T5ForConditionalGeneration.from_pretrained(FIXTURE).eval()
tokenizer = AutoTokenizer.from_pretrained(FIXTURE)
for kwargs in GENERATE_CASES:
    outputs = []
    for text in TEXTS:
        ids = tokenizer(text, return_tensors="pt").input_ids
        with torch.no_grad():
            outputs.append(model.generate(ids, do_sample=False, **kwargs)[0].tolist())
    print(f"generate: {json.dumps(kwargs)} -> {json.dumps(outputs)}")

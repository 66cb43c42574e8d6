"""Reference data and checks shared by the HTTP and gRPC client tests: the MiniLM batch, the tiny
BERT classifier's texts."""
import json
import pathlib

import numpy as np

REFERENCE = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "reference" / "minilm_embeddings.json"


def reference_batch():
    """The reference sentences' token ids padded into one batch: {input name: array}, plus the
    reference embeddings (fp32 model, mean pooling, L2 normalised)."""
    ref = json.loads(REFERENCE.read_text())
    ids = ref["input_ids"]
    seq = max(len(r) for r in ids)
    input_ids = np.zeros((len(ids), seq), dtype=np.int64)
    mask = np.zeros_like(input_ids)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    inputs = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)}
    return inputs, np.array(ref["embeddings"], dtype=np.float32)


def cosines(hidden, inputs, expected):
    """Mean-pools `hidden` over the attention mask, normalises, and returns the cosine of each
    embedding with its reference."""
    mask = inputs["attention_mask"]
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    return (pooled * expected).sum(1) / np.linalg.norm(expected, axis=1)


TINY_BERT = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "reference" / "tiny_bert_logits.json"


def tiny_bert_examples():
    """The tiny BERT classifier's reference texts, their softmax probabilities and labels."""
    examples = json.loads(TINY_BERT.read_text())["examples"]
    logits = np.array([e["logits"] for e in examples], dtype=np.float32)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    return [e["text"] for e in examples], probs, [e["label"] for e in examples]

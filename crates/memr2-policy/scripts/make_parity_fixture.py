#!/usr/bin/env python3
"""Builds the parity fixtures of memr2-policy: tiny random Qwen2 checkpoints in the Hugging Face
layout plus the reference logits that `transformers` computes for a few prompts.

    pip install torch transformers tokenizers safetensors
    python crates/memr2-policy/scripts/make_parity_fixture.py

Writes two fixtures (each well under 1 MB) under crates/memr2-policy/tests/fixtures/:

- tiny-qwen2/: untied LM head, float32 weights, and a byte-level BPE tokenizer.json trained here;
- tiny-qwen2-tied/: tied embeddings, bfloat16 weights (references computed after widening to f32).

Each holds config.json, model.safetensors and reference.json with the token ids of each prompt,
the logits of the prompts as a left-padded batch (positions counted from the attention mask, as
`generate` does; the longest row has no padding), and 6 greedily generated tokens per prompt.
"""

import json
import pathlib

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import Qwen2Config, Qwen2ForCausalLM

ROOT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"

CORPUS = [
    "Alice moved to Lyon in March and started a new job as a chef.",
    "Bob adopted a dog named Rex; the dog died last winter.",
    "Carol quit her job at the bank and now teaches piano.",
    "What city does Alice live in now? Lyon.",
    '{"facts":[{"speaker":"Alice","dia_id":"D3:7","fact":"Alice moved to Lyon"}]}',
    '{"operations":[{"operation":"ADD","text":"Bob has a dog"},{"operation":"DELETE","id":"m3"}]}',
    "The memory manager writes ADD, UPDATE, DELETE or nothing at all.",
] * 20

PROMPTS = [
    "Alice moved to Lyon",
    '{"facts":[{"speaker":"Bob"',
    "What job does Carol have now?",
]


def train_tokenizer(vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    return tokenizer


def to_list(t: torch.Tensor):
    return [[round(float(x), 6) for x in row] for row in t.tolist()]


def build(name: str, tokenizer: Tokenizer, tie: bool, dtype: torch.dtype, seed: int) -> None:
    out = ROOT / name
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=tie,
        bos_token_id=0,
        eos_token_id=2,
        initializer_range=0.2,
    )
    model = Qwen2ForCausalLM(config).eval()
    # Random biases too, so a loader that drops them fails the comparison.
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0.0, 0.2)
            layer.input_layernorm.weight.normal_(1.0, 0.1)
            layer.post_attention_layernorm.weight.normal_(1.0, 0.1)
        model.model.norm.weight.normal_(1.0, 0.1)
    model = model.to(dtype)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save(str(out / "tokenizer.json"))
    for extra in ("generation_config.json",):
        (out / extra).unlink(missing_ok=True)
    # References in float32 from exactly the stored weights, loaded back the way a user would
    # (a bf16 model cast to f32 in place would keep bf16-rounded rotary frequencies).
    model = Qwen2ForCausalLM.from_pretrained(out, dtype=torch.float32).eval()

    ids = [tokenizer.encode(p).ids for p in PROMPTS]
    reference = {"prompts": PROMPTS, "ids": ids, "greedy": []}
    with torch.no_grad():
        for row in ids:
            generated = model.generate(
                torch.tensor([row]),
                attention_mask=torch.ones(1, len(row), dtype=torch.long),
                max_new_tokens=6,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
            )
            reference["greedy"].append(generated[0, len(row):].tolist())
        width = max(len(r) for r in ids)
        input_ids = torch.tensor([[0] * (width - len(r)) + r for r in ids])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in ids])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions).logits
        reference["batch"] = {
            "input_ids": input_ids.tolist(),
            "attention_mask": mask.tolist(),
            "logits": [to_list(l) for l in logits],
        }
    (out / "reference.json").write_text(json.dumps(reference))
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"{out}: {size} bytes, {sum(p.numel() for p in model.parameters())} parameters")


def main() -> None:
    tokenizer = train_tokenizer(320)
    build("tiny-qwen2", tokenizer, tie=False, dtype=torch.float32, seed=0)
    build("tiny-qwen2-tied", tokenizer, tie=True, dtype=torch.bfloat16, seed=1)


if __name__ == "__main__":
    main()

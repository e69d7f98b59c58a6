"""Builds a random-weight Llama with an offline byte-level BPE tokenizer (no download).

Random weights are enough for kvtier: TTFT depends only on the shapes, and correctness is
checked by comparing generated token ids with and without the tier.

    python scripts/vllm_make_model.py --out DIR --layers 2 --hidden 256 --heads 4 --kv-heads 2
"""
import argparse
import json
import os
import random
import shutil
import tempfile


def train_tokenizer(vocab_size: int, seed: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    rng = random.Random(seed)
    syll = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"]
    words = ["".join(rng.choice(syll) for _ in range(rng.randint(1, 4))) for _ in range(5000)]
    text = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 40))) + "." for _ in range(20000)]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(text, trainer)
    return tok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--intermediate", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--max-positions", type=int, default=16384)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    parent = os.path.dirname(os.path.abspath(a.out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent)
    try:
        tok = train_tokenizer(a.vocab, a.seed)
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                       unk_token="<unk>")
        fast.model_max_length = a.max_positions
        fast.save_pretrained(tmp)
        vocab = tok.get_vocab_size()
        cfg = LlamaConfig(
            vocab_size=vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
            num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
            max_position_embeddings=a.max_positions, bos_token_id=tok.token_to_id("<s>"),
            eos_token_id=tok.token_to_id("</s>"), tie_word_embeddings=False,
            initializer_range=0.05, torch_dtype="bfloat16",
        )
        torch.manual_seed(a.seed)
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
        model.save_pretrained(tmp, safe_serialization=True)
        with open(os.path.join(tmp, "kvtier-model.json"), "w") as f:
            json.dump(vars(a) | {"vocab_size": vocab}, f, indent=1)
        if os.path.exists(a.out):
            shutil.rmtree(a.out)
        os.rename(tmp, a.out)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    print(f"model in {a.out}: {a.layers} layers, hidden {a.hidden}, {a.heads} heads, "
          f"{a.kv_heads} KV heads, vocab {vocab}")


if __name__ == "__main__":
    main()

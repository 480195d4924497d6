"""Build a tiny Llama-style model and a BPE tokenizer trained on your texts, saved as a normal HF directory.

No machine here reaches a model hub, so tests and the demo make their base model this way and the real
loading code (AutoModel/AutoTokenizer.from_pretrained) runs on it. The weights are random: fine-tuning
starts from scratch in the embeddings, which is what makes the demo's before/after gap measurable.

    python scripts/tiny_model.py OUT_DIR --texts DATA_FILE [--hidden 64 --layers 2]
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]
# The toy vocabulary of the demo's and the tests' word-list tasks.
WORDS = tuple("red blue green black white pink gray gold cat dog cow pig owl fox bee ant".split())  # noqa: SIM905


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Byte-level BPE (as GPT-2/Llama 3 use): any text encodes, nothing maps to <unk>."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def build_tiny_llama(
    out_dir: str | Path,
    texts: Iterable[str],
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    vocab_size: int = 512,
    seed: int = 0,
) -> Path:
    """Save a randomly initialised Llama (grouped-query attention, SwiGLU MLP) and its tokenizer in out_dir."""
    out_dir = Path(out_dir)
    tokenizer = train_tokenizer(texts, vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def build_instruction_llama(out_dir: str | Path, records: list[dict], **sizes) -> Path:
    """A tiny Llama for instruction records: its tokenizer learns the prompt template too (it is part of every
    example the model reads) and every text of the records; `sizes` as build_tiny_llama's (kv_heads = heads)."""
    from lightning_ft.data.formats import Instruction

    texts = [Instruction().template, *(v for r in records for v in r.values() if isinstance(v, str) and v)]
    return build_tiny_llama(out_dir, texts, kv_heads=sizes.get("heads", 4), **sizes)


def texts_of(path: Path) -> list[str]:
    """Every string value of every record of a data file in any format `--data.train_path` reads."""
    from lightning_ft.data.sources import read_records

    return [v for _, row in read_records(str(path), "--texts") for v in row.values() if isinstance(v, str)]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument(
        "--texts",
        type=Path,
        required=True,
        help="a data file (any format --data.train_path reads)",
    )
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab_size", type=int, default=512)
    args = parser.parse_args()
    path = build_tiny_llama(
        args.out_dir, texts_of(args.texts), hidden=args.hidden, layers=args.layers, vocab_size=args.vocab_size
    )
    print(f"tiny model: {path}")

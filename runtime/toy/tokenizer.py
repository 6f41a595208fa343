"""The toy model's word-level tokenizer: one token per ShapesBench caption word, built offline."""

from __future__ import annotations

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from freeatm.runtime.shapes import CAPTION_WORDS

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
MODEL_MAX_LENGTH = 16
"""Tokens per encoded prompt: BOS, up to 11 caption words, EOS, padding."""


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over :data:`~freeatm.runtime.shapes.CAPTION_WORDS` (ids are stable).

    Text is lower-cased and split on whitespace and punctuation; every word becomes one token,
    unknown words become ``<unk>``, and each encoding is wrapped in ``<bos>`` ... ``<eos>``.
    """
    vocab = {word: i for i, word in enumerate((PAD, UNK, BOS, EOS, *CAPTION_WORDS))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}",
        pair=f"{BOS} $A {EOS} $B {EOS}",
        special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        model_max_length=MODEL_MAX_LENGTH,
        padding_side="right",
        truncation_side="right",
    )

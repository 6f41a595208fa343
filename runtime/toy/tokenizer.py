"""The toy model's word-level tokenizer: one token per ShapesBench caption word, built offline."""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from freeatm.runtime.shapes import CAPTION_WORDS, CLUTTER_CAPTION_WORDS

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
MODEL_MAX_LENGTH = 16
"""Tokens per encoded plain prompt: BOS, up to 11 caption words, EOS, padding."""
SHAPESBENCH_WORDS: tuple[str, ...] = tuple(dict.fromkeys((*CAPTION_WORDS, *CLUTTER_CAPTION_WORDS)))
"""Every word of both ShapesBench variants; the plain words first, so their ids match :func:`build_tokenizer`'s."""
SHAPESBENCH_MAX_LENGTH = 24
"""Tokens per ShapesBench prompt of either variant: BOS, up to 15 words (four clutter objects), EOS, padding."""


def build_tokenizer(
    words: Sequence[str] = CAPTION_WORDS, max_length: int = MODEL_MAX_LENGTH
) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over `words` (default :data:`~freeatm.runtime.shapes.CAPTION_WORDS`, the toy
    model's vocabulary) encoding `max_length` tokens per prompt; ids are stable: the special tokens, then `words`
    in order.

    Text is lower-cased and split on whitespace and punctuation; every word becomes one token,
    unknown words become ``<unk>``, and each encoding is wrapped in ``<bos>`` ... ``<eos>``.
    """
    vocab = {word: i for i, word in enumerate((PAD, UNK, BOS, EOS, *words))}
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
        model_max_length=max_length,
        padding_side="right",
        truncation_side="right",
    )


def shapesbench_tokenizer() -> PreTrainedTokenizerFast:
    """The word-level tokenizer over :data:`SHAPESBENCH_WORDS` (both variants), :data:`SHAPESBENCH_MAX_LENGTH`
    tokens a prompt: the clutter toy model's and the VLP text tower's ``toy://shapesbench``."""
    return build_tokenizer(SHAPESBENCH_WORDS, SHAPESBENCH_MAX_LENGTH)

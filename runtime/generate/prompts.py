"""Prompts and their object words, from the three sources of ``spec.prompts``, and their token positions.

* ``preset: shapes`` / ``shapes-clutter`` — sample i is ShapesBench scene i of the dataset seed's stream, plain
  or clutter variant (:func:`freeatm.runtime.shapes.render`): its caption is the prompt, each shape noun an
  object word (class = the shape), its colour the modifier.
* ``classes`` × ``templates`` — sample i uses class ``classes[(i // perClass) % C]`` when ``perClass`` is set,
  else ``classes[i % C]`` (an even spread), and template ``templates[(i // C) % len(templates)]``; the class
  name is the object word (no modifiers).
* ``file`` — JSON lines ``{"prompt": "...", "objects": [...]}``; an object is a word (string) or
  ``{"word": ..., "class": ..., "modifiers": [...]}``; sample i uses line ``i % lines``.

Object words are located in the prompt as whole words, case-insensitively; the k-th object with a given word
is its k-th occurrence ("a red circle and a blue circle" has two). A modifier is its nearest occurrence before
the object word (else after it). Token positions come from the tokenizer's character offsets: every token
whose characters overlap the word's belongs to it, so a word split into several pieces has several positions.

The text sequence the attention sees may join several encodings of the prompt (:class:`TextSegment`): SD3's
is its CLIP encoding (77 positions) followed by its T5 encoding. A word's positions are then its positions in
every segment, each shifted by the segment's offset; a word that one segment cannot place is an error.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from freeatm.api.synthetic_dataset import Prompts
from freeatm.runtime.errors import InvalidInput


@dataclass(frozen=True)
class ObjectWord:
    """An object named by a prompt: its word, its class in the dataset vocabulary, its modifier words."""

    word: str
    cls: str
    modifiers: tuple[str, ...] = ()


@dataclass(frozen=True)
class PromptItem:
    prompt: str
    objects: tuple[ObjectWord, ...]


@dataclass(frozen=True)
class LocatedObject:
    """An object word with the token positions of the word and of its modifiers in the encoded prompt."""

    word: str
    cls: str
    modifiers: tuple[str, ...]
    word_tokens: tuple[int, ...]
    modifier_tokens: tuple[int, ...] = field(default=())

    def tokens(self, with_modifiers: bool) -> tuple[int, ...]:
        """The token positions averaged for this object."""
        return tuple(sorted(set(self.word_tokens + (self.modifier_tokens if with_modifiers else ()))))


class PromptSource(ABC):
    """Maps a sample index to its prompt and object words, deterministically."""

    classes: list[str]

    @abstractmethod
    def item(self, index: int) -> PromptItem: ...

    def finite_items(self) -> list[PromptItem] | None:
        """Every distinct item when the source is finite (checked up front), else None."""
        return None


class ShapesPrompts(PromptSource):
    def __init__(self, seed: int, size: int = 32, variant: str = "plain") -> None:
        from freeatm.runtime.shapes import shapes_of

        self.seed, self.size, self.variant = seed, size, variant
        self.classes = list(shapes_of(variant))

    def item(self, index: int) -> PromptItem:
        from freeatm.runtime.shapes import render

        scene = render(self.seed, index, max(self.size, 16), self.variant)
        return PromptItem(
            scene.caption, tuple(ObjectWord(o.word, o.shape, o.modifiers) for o in scene.objects)
        )


class ClassPrompts(PromptSource):
    def __init__(self, classes: list[str], templates: list[str], per_class: int | None) -> None:
        self.classes, self.templates, self.per_class = list(classes), list(templates), per_class

    def item(self, index: int) -> PromptItem:
        n = len(self.classes)
        cls = self.classes[(index // self.per_class) % n] if self.per_class else self.classes[index % n]
        template = self.templates[(index // n) % len(self.templates)]
        return PromptItem(template.replace("{}", cls), (ObjectWord(cls, cls),))

    def finite_items(self) -> list[PromptItem]:
        return [
            PromptItem(t.replace("{}", c), (ObjectWord(c, c),)) for c in self.classes for t in self.templates
        ]


class FilePrompts(PromptSource):
    def __init__(self, uri: str, text: str) -> None:
        self.uri = uri
        self.items = [
            self._parse(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()
        ]
        self.items = [i for i in self.items if i is not None]
        if not self.items:
            raise InvalidInput(f"prompts file {uri} holds no prompts")
        self.classes = sorted({o.cls for item in self.items for o in item.objects})

    def _parse(self, number: int, line: str) -> PromptItem | None:
        where = f"prompts file {self.uri} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise InvalidInput(f"{where}: not JSON: {e}") from e
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise InvalidInput(f'{where}: expected {{"prompt": "...", "objects": [...]}}')
        prompt, objects = record["prompt"], record.get("objects")
        if not isinstance(objects, list) or not objects:
            raise InvalidInput(f"{where}: prompt {prompt!r} has no object words (objects: [...])")
        parsed = []
        for obj in objects:
            if isinstance(obj, str):
                parsed.append(ObjectWord(obj, obj))
            elif isinstance(obj, dict) and isinstance(obj.get("word"), str):
                mods = obj.get("modifiers", [])
                if not isinstance(mods, list) or not all(isinstance(m, str) for m in mods):
                    raise InvalidInput(f"{where}: modifiers of {obj['word']!r} must be a list of words")
                parsed.append(ObjectWord(obj["word"], str(obj.get("class", obj["word"])), tuple(mods)))
            else:
                raise InvalidInput(
                    f'{where}: an object is a word or {{"word": ..., "class": ..., "modifiers": [...]}}'
                )
        return PromptItem(prompt, tuple(parsed))

    def item(self, index: int) -> PromptItem:
        return self.items[index % len(self.items)]

    def finite_items(self) -> list[PromptItem]:
        return self.items


def prompt_source(prompts: Prompts, seed: int, resolution: int = 32) -> PromptSource:
    """The source `prompts` describes; a prompts file is read (and checked) here."""
    if prompts.preset == "shapes":
        return ShapesPrompts(seed, resolution)
    if prompts.preset == "shapes-clutter":
        return ShapesPrompts(seed, resolution, "clutter")
    if prompts.classes is not None:
        return ClassPrompts(prompts.classes, prompts.templates, prompts.per_class)
    if prompts.file is not None:
        from freeatm.runtime.storage import open_store

        uri = prompts.file
        parent, _, name = uri.rstrip("/").rpartition("/")
        data = open_store(parent).read_bytes(name)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InvalidInput(f"prompts file {uri} is not UTF-8 text") from e
        return FilePrompts(uri, text)
    raise InvalidInput("spec.prompts names no source (preset, classes or file)")


# -- locating words and tokens ---------------------------------------------------------------------------------


def _occurrences(prompt: str, word: str) -> list[tuple[int, int]]:
    pattern = re.compile(r"(?<!\w)" + re.escape(word.strip()) + r"(?!\w)", re.IGNORECASE)
    return [m.span() for m in pattern.finditer(prompt)]


@dataclass(frozen=True)
class TextSegment:
    """One encoding of the prompt inside the text sequence the attention sees: its tokenizer, the position of
    its first token in that sequence and its length (the encoding is truncated to it)."""

    tokenizer: Any
    offset: int = 0
    length: int | None = None

    def max_length(self) -> int:
        """Tokens of this encoding: `length`, else the tokenizer's maximum (77 when it has none)."""
        if self.length is not None:
            return self.length
        max_length = getattr(self.tokenizer, "model_max_length", None) or 77
        return 77 if max_length > 100_000 else max_length  # "no limit" sentinel of some tokenizers


def _token_spans(
    tokenizer: Any, prompt: str, max_length: int
) -> tuple[list[int], list[tuple[int, int]] | None]:
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(prompt, truncation=True, max_length=max_length, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    enc = tokenizer(prompt, truncation=True, max_length=max_length)
    return list(enc["input_ids"]), None


def _tokens_for_span(
    tokenizer: Any, prompt: str, span: tuple[int, int], ids: list[int], offsets
) -> list[int]:  # type: ignore[no-untyped-def]
    start, end = span
    if offsets is not None:
        return [i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > start]
    # slow tokenizer: count the tokens of the text before the word and of the word itself
    before = tokenizer(prompt[:start], add_special_tokens=False)["input_ids"]
    word = tokenizer(prompt[start:end], add_special_tokens=False)["input_ids"]
    special = 1 if tokenizer.bos_token_id is not None and ids and ids[0] == tokenizer.bos_token_id else 0
    return [p for p in range(special + len(before), special + len(before) + len(word)) if p < len(ids)]


def locate(item: PromptItem, text: Any) -> list[LocatedObject]:
    """Positions of every object word (and its modifiers) of `item` in the text sequence `text` describes: a
    tokenizer (one encoding at position 0) or a sequence of :class:`TextSegment`; InvalidInput when a word is
    missing from the prompt or a segment cannot place it."""
    segments = tuple(text) if isinstance(text, (list, tuple)) else (TextSegment(text),)
    per_segment = [_locate_in(item, segment) for segment in segments]
    return [
        LocatedObject(
            obj.word, obj.cls, obj.modifiers,
            tuple(t for located in per_segment for t in located[k][0]),
            tuple(t for located in per_segment for t in located[k][1]),
        )
        for k, obj in enumerate(item.objects)
    ]  # fmt: skip


def _locate_in(item: PromptItem, segment: TextSegment) -> list[tuple[list[int], list[int]]]:
    """(word positions, modifier positions) of each object of `item` in one segment, offset included."""
    prompt, tokenizer = item.prompt, segment.tokenizer
    if not item.objects:
        raise InvalidInput(f"prompt {prompt!r} has no object words")
    ids, offsets = _token_spans(tokenizer, prompt, segment.max_length())
    unk = getattr(tokenizer, "unk_token_id", None)
    seen: dict[str, int] = {}
    located = []
    for obj in item.objects:
        spans = _occurrences(prompt, obj.word)
        k = seen.get(obj.word.lower(), 0)
        seen[obj.word.lower()] = k + 1
        if not obj.word.strip() or len(spans) <= k:
            what = "is not in" if not spans else f"occurs only {len(spans)} time(s) in"
            raise InvalidInput(f"object word {obj.word!r} {what} prompt {prompt!r}")
        span = spans[k]
        tokens = _tokens_for_span(tokenizer, prompt, span, ids, offsets)
        _check_tokens(obj.word, prompt, tokens, ids, unk)
        mod_tokens: list[int] = []
        for mod in obj.modifiers:
            mspans = _occurrences(prompt, mod)
            if not mspans:
                raise InvalidInput(
                    f"modifier {mod!r} of object word {obj.word!r} is not in prompt {prompt!r}"
                )
            before = [s for s in mspans if s[1] <= span[0]]
            mspan = before[-1] if before else mspans[0]
            mt = _tokens_for_span(tokenizer, prompt, mspan, ids, offsets)
            _check_tokens(mod, prompt, mt, ids, unk)
            mod_tokens.extend(mt)
        located.append(([segment.offset + t for t in tokens], [segment.offset + t for t in mod_tokens]))
    return located


def _check_tokens(word: str, prompt: str, tokens: Sequence[int], ids: Sequence[int], unk: int | None) -> None:
    if not tokens:
        raise InvalidInput(
            f"object word {word!r} of prompt {prompt!r} tokenises to no token (cut off by the tokenizer's "
            "maximum length, or dropped by the tokenizer)"
        )
    if unk is not None and all(ids[t] == unk for t in tokens):
        raise InvalidInput(f"object word {word!r} of prompt {prompt!r} is unknown to the model's tokenizer")


def check_source(source: PromptSource, text: Any) -> None:
    """Locate every item of a finite source up front (`text` as for :func:`locate`), so bad input fails before
    any image is generated."""
    items = source.finite_items()
    for item in items or []:
        locate(item, text)

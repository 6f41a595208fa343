"""Prompt sources and locating object words in token positions; bad prompts are InvalidInput."""

from __future__ import annotations

import json

import pytest

from freeatm.api.synthetic_dataset import Prompts
from freeatm.runtime.errors import InvalidInput
from freeatm.runtime.generate.prompts import (
    ClassPrompts,
    ObjectWord,
    PromptItem,
    check_source,
    locate,
    prompt_source,
)
from freeatm.runtime.shapes import render_scene
from freeatm.runtime.toy.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def tok():  # type: ignore[no-untyped-def]
    return build_tokenizer()


def test_shapes_preset_follows_render_scene(tok) -> None:  # type: ignore[no-untyped-def]
    source = prompt_source(Prompts(preset="shapes"), seed=7)
    assert source.classes == ["circle", "square", "triangle"]
    for i in range(20):
        item = source.item(i)
        scene = render_scene(7, i)
        assert item.prompt == scene.caption
        assert [(o.word, o.modifiers) for o in item.objects] == [
            (o.shape, (o.colour,)) for o in scene.objects
        ]
        located = locate(item, tok)
        ids = tok(item.prompt)["input_ids"]
        for obj in located:
            assert [tok.convert_ids_to_tokens(ids[t]) for t in obj.word_tokens] == [obj.word]
            assert [tok.convert_ids_to_tokens(ids[t]) for t in obj.modifier_tokens] == list(obj.modifiers)


def test_repeated_word_maps_to_successive_occurrences(tok) -> None:  # type: ignore[no-untyped-def]
    item = PromptItem(
        "a red circle and a blue circle",
        (ObjectWord("circle", "circle", ("red",)), ObjectWord("circle", "circle", ("blue",))),
    )
    a, b = locate(item, tok)
    assert a.word_tokens == (3,) and a.modifier_tokens == (2,) and a.tokens(True) == (2, 3)
    assert b.word_tokens == (7,) and b.modifier_tokens == (6,) and b.tokens(False) == (7,)


def test_class_templates(tok) -> None:  # type: ignore[no-untyped-def]
    source = ClassPrompts(["circle", "square"], ["a {}", "a red {}"], per_class=None)
    prompts = [source.item(i).prompt for i in range(6)]
    assert prompts == ["a circle", "a square", "a red circle", "a red square", "a circle", "a square"]
    per = ClassPrompts(["circle", "square"], ["a {}"], per_class=3)
    assert [per.item(i).objects[0].cls for i in range(7)] == ["circle"] * 3 + ["square"] * 3 + ["circle"]
    check_source(source, tok)


def test_prompts_file(tmp_path, tok) -> None:  # type: ignore[no-untyped-def]
    lines = [
        {
            "prompt": "a red circle and a blue square",
            "objects": ["circle", {"word": "square", "modifiers": ["blue"]}],
        },
        {"prompt": "a green triangle", "objects": [{"word": "triangle", "class": "tri"}]},
    ]
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    source = prompt_source(Prompts(file=f"file://{path}"), seed=0)
    assert source.classes == ["circle", "square", "tri"]
    assert source.item(3).prompt == "a green triangle"
    check_source(source, tok)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "line 1: not JSON"),
        ('{"prompt": "a red circle"}', "has no object words"),
        ('{"prompt": "a red circle", "objects": []}', "has no object words"),
        ('{"prompt": "a red circle", "objects": [3]}', "an object is a word"),
    ],
)
def test_prompts_file_errors(tmp_path, line: str, message: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "p.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(InvalidInput, match=message):
        prompt_source(Prompts(file=f"file://{path}"), seed=0)


def test_missing_prompts_file() -> None:
    with pytest.raises(InvalidInput, match="does not exist"):
        prompt_source(Prompts(file="file:///nonexistent/prompts.jsonl"), seed=0)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (PromptItem("a red circle", ()), "has no object words"),
        (
            PromptItem("a red circle", (ObjectWord("square", "square"),)),
            "'square' is not in prompt 'a red circle'",
        ),
        (
            PromptItem("a red circle", (ObjectWord("circle", "c"), ObjectWord("circle", "c"))),
            "occurs only 1 time",
        ),
        (
            PromptItem("a red circles", (ObjectWord("circle", "circle"),)),
            "is not in prompt",
        ),  # whole words only
        (
            PromptItem("a red dog", (ObjectWord("dog", "dog"),)),
            "'dog' .* is unknown to the model's tokenizer",
        ),
        (PromptItem("a red circle", (ObjectWord("circle", "circle", ("blue",)),)), "modifier 'blue'"),
        (
            PromptItem(
                " ".join(["a red circle and"] * 5) + " a blue square", (ObjectWord("square", "square"),)
            ),
            "tokenises to no token",
        ),
    ],
)
def test_bad_object_words(tok, item: PromptItem, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInput, match=message):
        locate(item, tok)


def test_check_source_fails_on_bad_class(tok) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInput, match="'dog'"):
        check_source(ClassPrompts(["circle", "dog"], ["a {}"], None), tok)

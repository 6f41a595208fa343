"""Reading YAML that users wrote: the one loader of `freeatm validate`, `render` and `run`.

What reaches the models is what the API server would have stored: JSON values only. Aliases are refused (an
alias bomb expands a kilobyte into gigabytes, and kubectl users rarely need them), as are duplicate keys (YAML
keeps the last silently), non-string keys, tags outside JSON's types, deep nesting and files over a size bound.
"""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node
from yaml.reader import ReaderError

MAX_BYTES = 1 << 20  # 1 MiB per file; the API server stores at most 1.5 MiB per object
MAX_DEPTH = 40  # nesting of mappings and sequences; a resource needs under 10
MAX_INT_DIGITS = 20  # int64 has 19 digits; longer integers cannot be stored by the API server

_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_NOT_JSON = ("binary", "set", "omap", "pairs")


class InputError(ValueError):
    """A file that cannot be read as YAML; `where` is "line L, column C" when known, else "-"."""

    def __init__(self, message: str, where: str = "-") -> None:
        super().__init__(message)
        self.where = where


class _Loader(yaml.SafeLoader):
    # Timestamps stay strings, as in JSON (metav1 parses them; the models expect str).
    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != _TIMESTAMP]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(AliasEvent):
            event = self.peek_event()
            raise ComposerError(
                None,
                None,
                f"alias *{event.anchor} is not allowed: write the value out in full (aliases are refused "
                "because a few of them can expand a small file into gigabytes)",
                event.start_mark,
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise ComposerError(
                    None, None, f"nesting deeper than {MAX_DEPTH} levels", self.peek_event().start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[str, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise ConstructorError(
                    None, None, f"key {key!r} is not a string: quote it", key_node.start_mark
                )
            if key in first_line:
                raise ConstructorError(
                    None,
                    None,
                    f"key {key!r} is written twice (first on line {first_line[key]}); write it once",
                    key_node.start_mark,
                )
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node: Node) -> int:
        if sum(c.isdigit() for c in str(node.value)) > MAX_INT_DIGITS:
            raise ConstructorError(
                None, None, f"integer of more than {MAX_INT_DIGITS} digits is out of range", node.start_mark
            )
        return super().construct_yaml_int(node)

    def _not_json(self, node: Node) -> Any:
        raise ConstructorError(
            None,
            None,
            f"tag {node.tag} has no JSON form; write a plain string, number or list",
            node.start_mark,
        )


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
_Loader.add_constructor(_TIMESTAMP, _Loader.construct_yaml_str)
for _name in _NOT_JSON:
    _Loader.add_constructor(f"tag:yaml.org,2002:{_name}", _Loader._not_json)


def _where_in_bytes(data: bytes, offset: int) -> str:
    line, line_start = data.count(b"\n", 0, offset) + 1, data.rfind(b"\n", 0, offset) + 1
    return f"line {line}, column {offset - line_start + 1}, byte offset {offset}"


def decode(data: bytes) -> str:
    """`data` as text: UTF-8 (a UTF-8 byte-order mark is dropped); anything else is an InputError."""
    for bom, name in ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                      (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16")):  # fmt: skip
        if data.startswith(bom):
            raise InputError(
                f"the file is {name} (it starts with a {name} byte-order mark); save it as UTF-8"
            )
    try:
        return data.removeprefix(codecs.BOM_UTF8).decode("utf-8")
    except UnicodeDecodeError as e:
        bad = data[e.start : e.start + 1].hex()
        raise InputError(
            f"byte 0x{bad} is not UTF-8; save the file as UTF-8", _where_in_bytes(data, e.start)
        ) from None


def parse(text: str) -> list[Any]:
    """The documents of a YAML stream, empty ones dropped; a YAML error is an InputError with its position."""
    try:
        loader = _Loader(text)
    except ReaderError as e:  # a control character: PyYAML checks the whole text up front
        line = text.count("\n", 0, e.position) + 1
        raise InputError(
            f"invalid YAML: character #x{e.character:04x} is not allowed in YAML; remove it",
            f"line {line}, column {e.position - (text.rfind(chr(10), 0, e.position) + 1) + 1}",
        ) from None
    try:
        docs = []
        while loader.check_data():
            doc = loader.get_data()
            if doc is not None:
                docs.append(doc)
        return docs
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "-"
        raise InputError(f"invalid YAML: {e.problem or e.context}", where) from None
    finally:
        loader.dispose()


def read_documents(path: Path) -> list[Any]:
    """The non-empty documents of the YAML file `path`; raises InputError (or OSError) saying what is wrong."""
    with path.open("rb") as f:
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise InputError(f"the file is larger than {MAX_BYTES // 1024} KiB; split it into several files")
    return parse(decode(data))

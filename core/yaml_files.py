"""Reading a definition file a person wrote (segments, campaigns, work lists), safely.

Every problem is a `YamlFileError` naming the file and, where known, the line: bytes that
are not UTF-8, YAML syntax, a key given twice, a key that is not text, nesting too deep to
be a definition. Nothing a user can write here ends in a traceback.

The loader reads YAML the way people expect, not YAML 1.1's surprises: `on`, `off`, `yes`,
`no` stay text (only `true` / `false` are booleans), and dates stay text (`2024-02-30` is
then reported by the field that expects a date, with its path, instead of failing inside
the YAML library).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

# A definition nested deeper, or holding more values, than this is not something a person
# wrote (and an alias bomb would otherwise expand without end in whoever reads it).
MAX_DEPTH = 100
MAX_NODES = 100_000


class YamlFileError(ValueError):
    """A file that cannot be read as a definition; the message names file and line."""

    def __init__(self, file: str, line: int | None, message: str) -> None:
        self.file, self.line, self.message = file, line, message
        where = f"{file}: line {line}" if line else file
        super().__init__(f"{where}: {message}")


class _DefinitionLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans, no implicit dates, and unique keys."""


# Keep every implicit resolver except booleans and timestamps, then add the strict booleans.
_DefinitionLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (
        "tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}  # fmt: skip
_DefinitionLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _construct_mapping(loader: _DefinitionLoader, node: yaml.MappingNode, deep: bool = False):
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            raise yaml.constructor.ConstructorError(
                None, None, f"the key {key!r} is not text; every key of a definition is a "
                "name (quote it if it is meant as one)", key_node.start_mark,
            )  # fmt: skip
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}; each key may appear once", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_DefinitionLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)


def _size(node: yaml.Node) -> tuple[int, int]:
    """(depth, nodes) of a YAML node tree, aliases expanded, stopping once past the limits
    (without recursion, so any nesting is measured safely)."""
    deepest = nodes = 0
    stack: list[tuple[yaml.Node, int]] = [(node, 1)]
    while stack and deepest <= MAX_DEPTH and nodes <= MAX_NODES:
        current, depth = stack.pop()
        deepest, nodes = max(deepest, depth), nodes + 1
        if isinstance(current, yaml.MappingNode):
            for key, value in current.value:
                stack.extend(((key, depth + 1), (value, depth + 1)))
        elif isinstance(current, yaml.SequenceNode):
            stack.extend((child, depth + 1) for child in current.value)
    return deepest, nodes


def _refuse_non_text(data: Any, file: str) -> None:
    """A string with a lone surrogate (written as a `\\ud800` escape) is not text: refuse
    it here, not when it is printed or saved somewhere later."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise YamlFileError(
                    file, None, f"{item[:40]!r} holds a character that is not text (a lone "
                    "surrogate escape such as \\ud800); remove it",
                ) from None  # fmt: skip


def parse_yaml(text: str, file: str) -> Any:
    """The YAML document in `text` (None for an empty file)."""
    loader = _DefinitionLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        depth, nodes = _size(node)
        line = node.start_mark.line + 1
        if depth > MAX_DEPTH:
            raise YamlFileError(
                file, line, f"nested more than {MAX_DEPTH} levels deep; no definition is"
            )
        if nodes > MAX_NODES:
            raise YamlFileError(
                file, line,
                f"holds more than {MAX_NODES:,} values (counting each alias in full); "
                "no definition is that large",
            )  # fmt: skip
        data = loader.construct_document(node)
        _refuse_non_text(data, file)
        return data
    except YamlFileError:
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or str(exc)
        if not isinstance(exc, yaml.constructor.ConstructorError):
            problem = f"not valid YAML: {problem}; check indentation and quoting"
        raise YamlFileError(file, mark.line + 1 if mark else None, problem) from None
    except RecursionError:
        raise YamlFileError(
            file, None, f"nested more than {MAX_DEPTH} levels deep; no definition is"
        ) from None
    except (yaml.YAMLError, ValueError, TypeError) as exc:
        raise YamlFileError(file, None, f"not valid YAML: {exc}") from None
    finally:
        loader.dispose()


def read_yaml_file(path: Path) -> Any:
    """Read and parse a definition file; every problem is a YamlFileError."""
    file = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise YamlFileError(file, None, f"cannot read the file: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise YamlFileError(
            file, line,
            f"byte {raw[exc.start]:#04x} is not UTF-8 text; save the file as UTF-8",
        ) from None  # fmt: skip
    return parse_yaml(text, file)

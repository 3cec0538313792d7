"""Reading a study file: a safe YAML loader, its limits, `--set` overrides and dotted keys.

Every error names the file (or the override), the dotted key and what was expected; nothing
here knows the schema (`orchestrator.study` validates what this reads).
"""

from __future__ import annotations

import copy
import math
import re
import reprlib
from pathlib import Path
from typing import Any

import yaml

MAX_VALUES = 100_000  # values in a parsed study, aliases expanded: a "billion laughs" file stops here
MAX_DEPTH = 64  # nesting levels of a parsed study
INT_LIMIT = 2**63 - 1  # what torch, numpy and MLflow can take

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlong = 40
_REPR.maxlist = _REPR.maxdict = _REPR.maxtuple = _REPR.maxset = 6
_REPR.maxlevel = 3


def short_repr(value: Any) -> str:
    """A repr short enough for an error line, whatever the value."""
    return _REPR.repr(value)


class StudyError(ValueError):
    """A study that cannot run; `problems` are 'where: key: what' lines."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set `a.b.c` in a nested dict; a dict value merges into what is there."""
    *parents, leaf = key.split(".")
    node = tree
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    if isinstance(value, dict) and isinstance(node.get(leaf), dict):
        node[leaf] = {**node[leaf], **value}
    else:
        node[leaf] = value


_BOOL_TAG = "tag:yaml.org,2002:bool"


class _StudyLoader(yaml.SafeLoader):
    """yaml.SafeLoader with YAML 1.2 booleans and strict mappings.

    Only true/false (any case style) are booleans: YAML 1.1's on/off/yes/no stay strings, so
    `train.mng: [exp, off]` means the schedule named "off" (a boolean field still takes "off" as
    false).  A key given twice in one mapping is an error, not a silent last-one-wins.  Unreadable
    scalars (2001-02-30, `!!int many`, a 5000-digit int) are YAML errors with a position instead of a
    ValueError from deep inside the constructor."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL_TAG]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {short_repr(key)} (a key may appear once in a mapping)", key_node.start_mark)
            seen.add(key) if isinstance(key, (str, int, float, bool)) else None
        return super().construct_mapping(node, deep)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, AttributeError, OverflowError):
            problem = f"cannot read {short_repr(node.value)[1:-1]} as a YAML {node.tag.rsplit(':', 1)[-1]}"
            raise yaml.constructor.ConstructorError(
                None, None, f"{problem} (quote it to make it a string)", node.start_mark) from None


_StudyLoader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _safe_load(text: str) -> Any:
    """yaml.safe_load with the errors above; RecursionError (absurd nesting) is left to the caller."""
    return yaml.load(text, Loader=_StudyLoader)  # noqa: S506 - a SafeLoader subclass


def parse_override(text: str) -> tuple[str, Any]:
    """`train.steps=200` -> ('train.steps', 200); values are YAML (numbers, lists, true/false)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_/.-]+)*", key):
        raise StudyError([f"--set {text}: expected KEY=VALUE with a dotted key, e.g. train.steps=200"])
    try:
        return key, _safe_load(value)
    except (yaml.YAMLError, RecursionError) as exc:
        problem = getattr(exc, "problem", None) or "nested too deeply"
        raise StudyError([f"--set {short_repr(text)[1:-1]}: value is not valid YAML ({problem})"]) from None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    for text in overrides:
        key, value = parse_override(text)
        if key.startswith("grid."):
            raw.setdefault("grid", {})
            if not isinstance(raw["grid"], dict):
                raise StudyError([f"--set {text}: the study's grid is not a mapping"])
            raw["grid"][key[len("grid."):]] = value if isinstance(value, list) else [value]
        else:
            set_dotted(raw, key, value)
    return raw


def _line_column(data: bytes | str, offset: int) -> str:
    """'line:column' (1-based) of an offset into a file's bytes or text."""
    newline = b"\n" if isinstance(data, bytes) else "\n"
    return f"{data.count(newline, 0, offset) + 1}:{offset - (data.rfind(newline, 0, offset) + 1) + 1}"


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse a UTF-8 study file with a safe loader; errors carry the line and column."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StudyError([f"{path}: cannot read study file ({exc.strerror or exc})"]) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise StudyError([f"{path}:{_line_column(data, exc.start)}: not UTF-8 text (byte 0x{data[exc.start]:02x}); "
                          "save the file as UTF-8"]) from None
    try:
        raw = _safe_load(text)
    except RecursionError:
        raise StudyError([f"{path}: invalid YAML: nested too deeply"]) from None
    except yaml.YAMLError as exc:
        mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None) or str(exc)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        if isinstance(exc, yaml.reader.ReaderError):  # a character YAML does not allow, e.g. NUL
            where, problem = f"{path}:{_line_column(text, exc.position)}", f"character {exc.character!r} is not allowed"
        elif "'\\t'" in problem:
            problem = "a tab where YAML expects spaces (tabs cannot indent YAML)"
        raise StudyError([f"{where}: invalid YAML: {problem}"]) from None
    if raw is None:
        raise StudyError([f"{path}: the study file is empty; it needs at least `name: ...`"])
    if not isinstance(raw, dict):
        raise StudyError([f"{path}: a study file must be a mapping of keys (name, dataset, model, ...), got {type(raw).__name__}"])
    return raw


def check_values(tree: Any, where: str) -> list[str]:
    """Problems of a parsed study that the schema cannot check safely, as 'where: key: what' lines: more than
    MAX_VALUES values once YAML aliases are expanded, self-reference, deep nesting, non-finite floats, integers
    beyond 64 bits and NUL characters (which no path can hold)."""
    problems: list[str] = []
    stack: list[tuple[Any, str, tuple[int, ...]]] = [(tree, "", ())]  # value, dotted key, ids of its containers
    count = 0
    while stack and len(problems) < 20:
        value, key, above = stack.pop()
        count += 1
        if count > MAX_VALUES:
            return [f"{where}: {key.split('.')[0] or '<top level>'}: the study expands to more than {MAX_VALUES} "
                    "values (YAML aliases repeating a large block?)"]
        if isinstance(value, (dict, list)):
            if id(value) in above:
                problems.append(f"{where}: {key}: refers to itself (a recursive YAML alias)")
            elif len(above) >= MAX_DEPTH:
                problems.append(f"{where}: {key}: nested more than {MAX_DEPTH} levels deep")
            else:
                items = value.items() if isinstance(value, dict) else enumerate(value)
                children = [(child, f"{key}.{k}" if key else str(k), (*above, id(value))) for k, child in items]
                stack += reversed(children)  # depth first, in file order
        elif isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{where}: {key}: must be a finite number (got {value})")
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT_LIMIT:
            problems.append(f"{where}: {key}: out of range: integers must lie within +-(2**63 - 1) "
                            f"(got {short_repr(value)})")
        elif isinstance(value, str) and "\0" in value:
            problems.append(f"{where}: {key}: contains a NUL character ({short_repr(value)})")
    return problems

"""Helpers of the static deployment checks: YAML with compose tags, compose interpolation
and merge, a small Dockerfile parser, and PromQL metric-name extraction."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------
# YAML with compose's merge tags (pyyaml is imported lazily: test modules skip without it)


class Reset:
    """A ``!reset`` value of a compose override: removes the key it is set on."""


@functools.cache
def compose_loader() -> type:
    """A SafeLoader that also accepts compose's ``!reset`` and ``!override`` tags."""
    import yaml

    class ComposeLoader(yaml.SafeLoader):
        pass

    def reset(loader: yaml.SafeLoader, node: yaml.Node) -> Reset:
        return Reset()

    def override(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
        if isinstance(node, yaml.MappingNode):
            return loader.construct_mapping(node, deep=True)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node, deep=True)
        return loader.construct_scalar(node)

    ComposeLoader.add_constructor("!reset", reset)
    ComposeLoader.add_constructor("!override", override)
    return ComposeLoader


def load_yaml_docs(path: Path) -> list[Any]:
    import yaml

    with open(path, encoding="utf-8") as handle:
        return [doc for doc in yaml.load_all(handle, Loader=compose_loader()) if doc is not None]


def load_yaml(path: Path) -> Any:
    docs = load_yaml_docs(path)
    assert len(docs) == 1, f"{path}: expected one YAML document, found {len(docs)}"
    return docs[0]


# ---------------------------------------------------------------------------------------------
# Compose variable interpolation (${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, $$),
# defaults may nest: ${A:-${B:-x}}

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPS = (":-", ":?", ":+", "-", "?", "+")


def _braced_end(text: str, start: int) -> int:
    """Index of the ``}`` closing the ``${`` at ``start`` (nested ``${...}`` skipped)."""
    depth, i = 0, start
    while i < len(text):
        if text.startswith("${", i):
            depth += 1
            i += 2
            continue
        if text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ValueError(f"unclosed ${{ in {text!r}")


def _expand(text: str, env: Mapping[str, str], names: set[str] | None = None) -> str:
    out, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            end = _braced_end(text, i)
            out.append(_substitute(text[i + 2 : end], env, names))
            i = end + 1
        elif text[i] == "$" and (match := _NAME.match(text, i + 1)):
            if names is not None:
                names.add(match.group(0))
            out.append(env.get(match.group(0)) or "")
            i = match.end()
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _substitute(body: str, env: Mapping[str, str], names: set[str] | None) -> str:
    match = _NAME.match(body)
    if not match:
        raise ValueError(f"bad variable ${{{body}}}")
    name, rest = match.group(0), body[match.end() :]
    if names is not None:
        names.add(name)
    op = next((o for o in _OPS if rest.startswith(o)), "")
    if rest and not op:
        raise ValueError(f"bad variable ${{{body}}}")
    arg = _expand(rest[len(op) :], env, names)
    current = env.get(name)
    if op == ":-":
        return current if current else arg
    if op == "-":
        return current if current is not None else arg
    if op in (":?", "?"):
        if not current and (op == ":?" or current is None):
            raise KeyError(f"required variable {name} is not set: {arg}")
        return current or ""
    if op == ":+":
        return arg if current else ""
    if op == "+":
        return arg if current is not None else ""
    return current or ""


def compose_variables(text: str) -> set[str]:
    """Names of the variables a compose file interpolates (nested defaults included)."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        try:
            _expand(line, {}, names)  # defaults are expanded too, so nested names count
        except KeyError:  # ${VAR:?message}: the name was recorded before the error
            pass
    return names


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's interpolation over a parsed file, with ``env`` as the project environment."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value
    return _expand(value, env)


#: Sequences an override replaces; compose merges (appends to) the others.
_REPLACED_SEQUENCES = {"command", "entrypoint", "test", "args"}


def merge_compose(base: Any, override: Any, key: str = "") -> Any:
    """Compose's override merge (simplified): mappings merge, ``!reset`` removes a key,
    command-like sequences are replaced and other sequences appended (without duplicates)."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for name, value in override.items():
            if isinstance(value, Reset):
                merged.pop(name, None)
            elif name in merged:
                merged[name] = merge_compose(merged[name], value, str(name))
            else:
                merged[name] = value
        return merged
    if isinstance(base, list) and isinstance(override, list) and key == "volumes":
        # Mounts merge by their path in the container: an override's mount replaces the base's.
        merged_mounts = {_mount_target(v): v for v in base}
        merged_mounts.update({_mount_target(v): v for v in override})
        return list(merged_mounts.values())
    if isinstance(base, list) and isinstance(override, list) and key not in _REPLACED_SEQUENCES:
        return base + [item for item in override if item not in base]
    return override


def _mount_target(volume: Any) -> str:
    """The container path of a service's volume (short ``src:dst[:mode]`` or long syntax)."""
    if isinstance(volume, dict):
        return str(volume["target"])
    text = str(volume)
    while "${" in text:  # the source may be a variable with a default: ${SRC:-./x}
        start = text.index("${")
        text = text[:start] + "SOURCE" + text[_braced_end(text, start) + 1 :]
    parts = text.split(":")
    return parts[1] if len(parts) > 1 else parts[0]


def environment(service: Mapping[str, Any]) -> dict[str, str | None]:
    """A service's ``environment`` as a mapping (list form ``KEY=VALUE`` / ``KEY`` too)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        out: dict[str, str | None] = {}
        for item in env:
            key, sep, value = str(item).partition("=")
            out[key] = value if sep else None
        return out
    return {str(k): (None if v is None else str(v)) for k, v in env.items()}


@dataclass
class MetricFamily:
    name: str
    type: str
    labels: tuple[str, ...] = ()
    samples: set[str] = field(default_factory=set)


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(path: Path) -> list[Stage]:
    """Instructions grouped by stage (comments dropped, continuation lines joined)."""
    stages: list[Stage] = []
    pending, start = "", 0
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = (pending + stripped).strip()
        pending = ""
        keyword, _, args = text.partition(" ")
        instruction = Instruction(keyword.upper(), args.strip(), start)
        if instruction.keyword == "FROM":
            parts = instruction.args.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name, parts[0], []))
        elif stages:
            stages[-1].instructions.append(instruction)
    return stages


def exec_form(args: str) -> list[str] | None:
    """The JSON array of an exec-form instruction, else None (shell form)."""
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


def all_dockerfiles() -> Iterator[Path]:
    skip = {".git", ".venv", "node_modules", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
    for path in sorted(ROOT.rglob("*")):
        if any(part in skip for part in path.relative_to(ROOT).parts):
            continue
        name = path.name
        if path.is_file() and (
            name == "Dockerfile" or name.startswith("Dockerfile.") or name.endswith(".Dockerfile")
        ):
            yield path


# ---------------------------------------------------------------------------------------------
# PromQL, as far as the checks need it: which metrics an expression reads, with which matchers

PROMQL_AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}  # fmt: skip
PROMQL_FUNCTIONS = PROMQL_AGGREGATIONS | {
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh",
    "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh",
    "count_over_time", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "deg",
    "delta", "deriv", "double_exponential_smoothing", "exp", "floor", "histogram_avg",
    "histogram_count", "histogram_fraction", "histogram_quantile", "histogram_stddev",
    "histogram_stdvar", "histogram_sum", "holt_winters", "hour", "idelta", "increase", "irate",
    "label_join", "label_replace", "last_over_time", "ln", "log10", "log2", "mad_over_time",
    "max_over_time", "min_over_time", "minute", "month", "pi", "predict_linear",
    "present_over_time", "quantile_over_time", "rad", "rate", "resets", "round", "scalar", "sgn",
    "sin", "sinh", "sort", "sort_by_label", "sort_by_label_desc", "sort_desc", "sqrt",
    "stddev_over_time", "stdvar_over_time", "sum_over_time", "tan", "tanh", "time", "timestamp",
    "vector", "year",
}  # fmt: skip
PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "atan2", "inf", "nan", "Inf", "NaN",
}  # fmt: skip

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_IDENT = r"[A-Za-z_:][A-Za-z0-9_:]*"
_SELECTOR = re.compile(rf"(?P<name>{_IDENT})?\s*\{{(?P<body>[^{{}}]*)\}}")
_MATCHER = re.compile(
    rf'\s*(?P<label>{_IDENT})\s*(?P<op>=~|!~|!=|=)\s*"(?P<value>(?:\\.|[^"\\])*)"'
)


@dataclass
class Selector:
    name: str | None
    matchers: list[tuple[str, str, str]]  # (label, op, value)

    def name_matchers(self) -> list[tuple[str, str]]:
        return [(op, value) for label, op, value in self.matchers if label == "__name__"]


def promql_check_balanced(expr: str) -> None:
    """Brackets of ``expr`` (outside strings) pair up."""
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for char in _STRING.sub('""', expr):
        if char in "([{":
            stack.append(char)
        elif char in pairs:
            assert stack and stack[-1] == pairs[char], f"unbalanced {char!r} in {expr!r}"
            stack.pop()
    assert not stack, f"unclosed {stack} in {expr!r}"


def promql_selectors(expr: str) -> list[Selector]:
    """Vector selectors with label matchers (``name{...}`` and ``{...}``)."""
    out = []
    for match in _SELECTOR.finditer(expr):
        body = match.group("body").strip().rstrip(",")
        matchers = []
        for part in _split_matchers(body):
            parsed = _MATCHER.fullmatch(part)
            assert parsed, f"bad label matcher {part!r} in {expr!r}"
            matchers.append((parsed["label"], parsed["op"], parsed["value"]))
        name = match.group("name")
        if name in PROMQL_KEYWORDS or name in PROMQL_FUNCTIONS:
            name = None
        out.append(Selector(name, matchers))
    return out


def _split_matchers(body: str) -> list[str]:
    parts, current, quoted = [], "", False
    for i, char in enumerate(body):
        if char == '"' and (i == 0 or body[i - 1] != "\\"):
            quoted = not quoted
        if char == "," and not quoted:
            parts.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def promql_names(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, function names) an expression uses."""
    text = re.sub(r"\$\{?__\w+\}?", "5m", expr)  # Grafana's $__rate_interval and friends
    text = _SELECTOR.sub(lambda m: f" {m.group('name') or ''} ", text)
    text = _STRING.sub(" ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery brackets
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\boffset\s+-?\w+", " ", text)
    text = re.sub(r"(?<![A-Za-z_:])\d+(\.\d+)?([eE][+-]?\d+)?", " ", text)
    metrics, functions = set(), set()
    for match in re.finditer(rf"({_IDENT})\s*(\()?", text):
        token, call = match.group(1), match.group(2)
        if call:
            functions.add(token)
        elif token not in PROMQL_KEYWORDS:
            metrics.add(token)
    return metrics, functions


def promql_range_functions(expr: str) -> list[tuple[str, str]]:
    """(function, metric) for rate/irate/increase/delta... applied to a plain selector."""
    return re.findall(
        rf"\b(rate|irate|increase|resets|delta|idelta|deriv)\s*\(\s*({_IDENT})\s*[\{{\[]", expr
    )


def grafana_label_values_metric(query: str) -> str | None:
    """The metric of a Grafana ``label_values(metric, label)`` variable query."""
    match = re.match(rf"\s*label_values\(\s*({_IDENT})\s*,", query)
    return match.group(1) if match else None

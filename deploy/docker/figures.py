"""The "Figures" table of deploy/README.md, written from what the end-to-end test measured.

    R3_DOCKER_FIGURES=/tmp/figures.json pytest tests/deploy/test_docker_e2e.py
    python deploy/docker/figures.py /tmp/figures.json

keeps the measured file as ``deploy/docker/figures.json`` and rewrites the table between
``<!-- figures:begin -->`` and ``<!-- figures:end -->`` in deploy/README.md. A test checks that
the table is what this script makes of ``deploy/docker/figures.json``: the docs show the last
run's figures, never hand-copied ones. Standard library only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
FIGURES = ROOT / "deploy" / "docker" / "figures.json"
README = ROOT / "deploy" / "README.md"
BEGIN, END = "<!-- figures:begin -->", "<!-- figures:end -->"


def _mb(value: float) -> str:
    return f"{value / 1000:.2f} GB" if value >= 1000 else f"{value:.0f} MB"


def _trainer_torch(f: dict[str, Any]) -> str:
    if "trainer_torch" in f:
        base = f.get("trainer_base_image", "a Debian 13 base")
        size = f", {_mb(f['trainer_base_image_mb'])}" if "trainer_base_image_mb" in f else ""
        return f"Debian's python3-torch {f['trainer_torch']} (apt), on {base}{size}"
    if "torch_wheel" in f:
        return f"`{f['torch_wheel']}`"
    return "PyTorch's CPU index"


def table(f: dict[str, Any]) -> str:
    """The Markdown of the figures ``f`` (the JSON the end-to-end test writes)."""
    v = f["versions"]
    rows = [
        ("`setup-host.sh` on the host (Docker, Compose v2, CA bundle, base image, trainer's torch; "
         "what was already there is skipped)", f"{f['setup_host_s']:.0f} s"),
        ("base image", f["base_image"]
         + (f", {_mb(f['base_image_mb'])}" if "base_image_mb" in f else "")),
        ("torch of the CPU trainer", _trainer_torch(f)),
        ("reward image, CPU (`runtime`: ONNX Runtime, the service, the exported MiniLM and the "
         "query-type classifier; no torch)", _mb(f["reward_image_mb"])),
        ("trainer image, CPU torch", _mb(f["trainer_image_mb"])),
        ("build of the reward image (`docker compose build reward`)",
         f"{f['reward_build_s']:.1f} s"),
        ("build of the trainer image", f"{f['trainer_build_s']:.1f} s"),
        ("`docker run` to `/readyz` 200", f"{f['reward_ready_s']:.1f} s"),
        ("`docker run` to `healthy` (the first `HEALTHCHECK` runs after its 10 s interval)",
         f"{f['reward_healthy_s']:.1f} s"),
        ("memory, idle after the README example: the reward encoder (MiniLM) and the query-type "
         "classifier, a fine-tuned MiniLM encoder of its own", f"{f['reward_idle_mib']} MiB"),
        ("memory, idle, the same image without the classifier (`R3_ALLOW_NO_CLASSIFIER`; "
         "typed items only): the classifier's cost is the difference",
         f"{f['reward_idle_no_classifier_mib']} MiB "
         f"({f['reward_idle_mib'] - f['reward_idle_no_classifier_mib']} MiB for the classifier)"),
        ("memory, 12 requests of 48 items in flight", f"{f['reward_under_load_mib']} MiB"),
    ]  # fmt: skip
    pid1, init = f["drain_pid1"], f["drain_init"]
    rows += [
        ("`docker stop` with 12 requests in flight",
         f"all {pid1['in_flight']} answered 200 with every reward ({pid1['answered_after_stop']} "
         f"of them after the stop; {init['answered_after_stop']} with `--init`); stopped in "
         f"{pid1['stop_s']:.1f} s ({init['stop_s']:.1f} s with `--init`)"),
        ("exit status after SIGTERM",
         f"{pid1['exit_code']} as PID 1 (plain `docker run`), {init['exit_code']} with `--init`"),
        ("`docker compose up -d --build` to a healthy `reward` (trainer started; images built)",
         f"{f['stack_reward_healthy_s']:.1f} s"),
        ("CPU stack until the trainer exits: load, baseline evaluation, the `train.cpu.yaml` "
         "steps, final evaluation, checkpoint", f"{f['stack_train_s']:.0f} s"),
    ]  # fmt: skip
    if "trainer_s_per_step" in f:
        rows.append(("trainer, one PPO step of `train.cpu.yaml` (the trainer's own log)",
                     f"{f['trainer_s_per_step']:.1f} s"))  # fmt: skip
    lines = [
        f"Docker Engine {v['server']}, CLI {v['client']}, Compose {v['compose']}; "
        f"{f.get('machine', 'the CI machine')}.",
        "",
        "| what | figure |",
        "| --- | --- |",
        *(f"| {what} | {value} |" for what, value in rows),
    ]
    return "\n".join(lines)


def block(f: dict[str, Any]) -> str:
    """The README's figures block, markers included."""
    return f"{BEGIN}\n{table(f)}\n{END}"


def readme_block(text: str) -> str:
    """The figures block as it stands in ``text``."""
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[start:end]


def main(argv: list[str]) -> int:
    source = Path(argv[1]) if len(argv) > 1 else FIGURES
    figures = json.loads(source.read_text(encoding="utf-8"))
    if source.resolve() != FIGURES:
        FIGURES.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    text = README.read_text(encoding="utf-8")
    README.write_text(text.replace(readme_block(text), block(figures)), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

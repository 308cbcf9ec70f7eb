"""Rewards of the same items through the installed service code (old or new layout)."""

import asyncio
import json
import os
import sys

if os.environ.get("R3_CODE"):
    sys.meta_path[:] = [
        f
        for f in sys.meta_path
        if "editable" not in type(f).__name__.lower()
        and "editable" not in getattr(f, "__module__", "").lower()
    ]
    sys.path.insert(0, os.environ["R3_CODE"])
import numpy as np

from r3_service.classifier.runtime import find_classifier, load_classifier
from r3_service.config import Settings
from r3_service.encoder import load_encoder
from r3_service.models import resolve_model_dir
from r3_service.reward.formula import QueryType

rows = json.load(open("/work/shared/data/alpacafarm_qtype.json"))
if isinstance(rows, dict):
    rows = rows.get("rows") or rows.get("data")


def field(r, *names):
    for n in names:
        if n in r and r[n]:
            return r[n]
    return ""


n = int(sys.argv[2]) if len(sys.argv) > 2 else 800
s = Settings()
folder = resolve_model_dir(None, s.cache_dir)
enc = load_encoder(folder)
clf = load_classifier(find_classifier(folder) or folder, enc)
try:
    from r3_service.engine import EmbeddingEngine
    from r3_service.scoring import RewardItem, RewardScorer

    scorer = RewardScorer(EmbeddingEngine(enc), clf)
    start, score = scorer.start, scorer.score
    stop = scorer.stop
except ImportError:
    # The code before the split (cb01d27), which this checkout no longer has.
    from r3_service.engine import RewardEngine, RewardItem  # type: ignore[attr-defined,no-redef,unused-ignore]

    eng = RewardEngine(enc, classifier=clf)
    clf.start()
    start, score, stop = eng.start, eng.score, eng.stop
items = []
for i in range(n):
    r = rows[i % len(rows)]
    q = r["input"]
    ref = field(r, "output", "reference", "response")
    other = field(rows[(i * 7 + 3) % len(rows)], "output", "reference", "response")
    resp = ref if i % 3 == 0 else (other if i % 3 == 1 else (ref[: len(ref) // 2] + "\n\n--\nsig"))
    qt = None if i % 2 else (QueryType(r["qtype"]) if "qtype" in r else None)
    items.append(RewardItem(query=q, response=resp, reference=ref, qtype=qt))
start()


async def go():
    out = []
    for k in range(0, len(items), 8):
        out.extend((await score(items[k : k + 8])).rewards)
    return out


rewards = asyncio.run(go())
stop()
np.save(sys.argv[1], np.array(rewards, dtype=np.float64))
if len(sys.argv) > 3:  # compare with another run's rewards
    other = np.load(sys.argv[3])
    same = np.array_equal(other, np.array(rewards))
    print(len(rewards), "identical bitwise:", same, "max diff", abs(other - rewards).max())  # noqa: T201

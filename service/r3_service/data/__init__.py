"""Data files that ship with the package."""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent

#: 2,000 AlpacaFarm prompts with ``input``, reference ``output`` and ``qtype`` (1,067
#: CONSTRAINED / 933 OPENENDED), from the R^3 authors' release (Apache-2.0); see README.md here.
ALPACAFARM_QTYPE = DATA_DIR / "alpacafarm_qtype.json"

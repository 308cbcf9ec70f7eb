#!/bin/bash
# Alternating rounds of the three engines on the same 768 texts (issue 26).
M=/root/.cache/r3/models/all-MiniLM-L6-v2-0.1.0-fp32
T=/tmp/texts768.json
for r in 1 2 3; do
  /work/main/.venv/bin/python raw_engines.py ort-cpu $M $T /tmp/emb_ort.npy
  /tmp/ortov-venv/bin/python raw_engines.py ort-openvino $M $T /tmp/emb_ortov.npy
  /work/main/.venv/bin/python raw_engines.py openvino $M $T /tmp/emb_ov.npy
done
/work/main/.venv/bin/python -c "
import numpy as np
a=np.load('/tmp/emb_ort.npy')
for n in ('ortov','ov'):
    b=np.load(f'/tmp/emb_{n}.npy'); print(n, 'max abs diff vs ort-cpu', float(np.abs(a-b).max()))"

"""Training query-type classifiers (the ``classifier-training`` extra; ``r3-train-classifier``).

Apart from serving, which loads and runs a classifier (:mod:`r3_service.classifier`) and never
imports this package (an import contract in CI). The two meet in the file formats: the adapter
(``classifier/adapter.py``), the head (``classifier/head.py``) and the text a classifier sees
(``classifier/text.py``: ``plain_prompt``, ``head_tail``).

- :mod:`.finetune`: all-MiniLM-L6-v2 fine-tuned end to end (LoRA and a linear head), the
  shipped classifier;
- :mod:`.train`: the v1 logistic head on an encoder's frozen embeddings (other encoders);
- :mod:`.augment`: label-preserving rewrites of prompts; :mod:`.splits`: data and folds;
  :mod:`.calibration`: temperature, ECE, abstentions; :mod:`.cli`: the command.
"""

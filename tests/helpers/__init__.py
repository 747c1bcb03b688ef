"""What the tests share: checkpoints, corpora and tokenizers (models.py), synthetic and recorded runs
(synthetic_run.py, analysis_runs.py, dashboard_runs.py). Fixtures built on them: tests/conftest.py;
torchrun and interpreter workers: tests/workers/."""

from .models import (HF_TINY, REPO, cast_, hf_checkpoint, load_hf, make_corpus, make_probe_ckpt, make_tokenizer, random_model,
                     randomize_)

__all__ = ["HF_TINY", "REPO", "cast_", "hf_checkpoint", "load_hf", "make_corpus", "make_probe_ckpt", "make_tokenizer",
           "random_model", "randomize_"]

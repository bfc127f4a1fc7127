"""Shared test fixtures: optional-oracle imports, the path to ../shared and GPT-2's tokenizer files."""
import functools
import importlib
import json
import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # flat modules live at the repository root

SHARED = ROOT.parent / "shared"


@pytest.fixture(autouse=True, scope="session")
def cache_home_of_the_session(tmp_path_factory):
    """Point $XDG_CACHE_HOME at a temporary directory for the whole session, so that the token caches a test makes
    without naming a cache directory (a training run on a text file) never land in the user's ~/.cache."""
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache-home"))
    yield
    if previous is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = previous


def require_oracle(module_name):
    """Import an oracle library (torch, tiktoken, ...) or skip the test.

    Under REQUIRE_ORACLES=1 (as CI sets it) a missing oracle is a failure, so CI can never
    pass by silently skipping the comparisons that prove correctness.
    """
    try:
        return importlib.import_module(module_name)
    except ImportError:
        message = f"oracle '{module_name}' is not installed (pip install -r requirements-oracle.txt)"
        if os.environ.get("REQUIRE_ORACLES") == "1":
            pytest.fail(message + " and REQUIRE_ORACLES=1 is set")
        pytest.skip(message)


def require_shared(relative_path):
    """Path to a file in ../shared, or skip when a fresh clone has no ../shared beside it."""
    path = SHARED / relative_path
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared is only beside the project's own checkout)")
    return path


GPT2_TOKENIZER_VARIABLE = "NPGPT_GPT2_TOKENIZER_DIR"
GPT2_TOKENIZER_HOW_TO = (
    "get them once with `python -c \"from transformers import GPT2TokenizerFast as T; "
    "T.from_pretrained('gpt2').save_pretrained('gpt2-tokenizer')\"` and set "
    f"{GPT2_TOKENIZER_VARIABLE}=/absolute/path/to/gpt2-tokenizer"
)


def require_gpt2_tokenizer():
    """Directory holding GPT-2's vocab.json and merges.txt, found through $NPGPT_GPT2_TOKENIZER_DIR or in
    ../shared/data/gpt2-tokenizer.

    A directory with only the tokenizer.json that current transformers saves works too (its vocabulary and
    merges are written out once as the two files, in a temporary directory). With neither, the test skips, or
    fails under REQUIRE_ORACLES=1: CI has ../shared, so a missing file there is a broken setup. A variable that
    names a directory without the files always fails: the user asked for those files.
    """
    configured = os.environ.get(GPT2_TOKENIZER_VARIABLE)
    directory = Path(configured).expanduser() if configured else SHARED / "data" / "gpt2-tokenizer"
    if (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
        return directory
    if (directory / "tokenizer.json").is_file():
        return Path(_vocab_and_merges_from(directory / "tokenizer.json").name)
    message = f"GPT-2's tokenizer files (vocab.json + merges.txt, or tokenizer.json) are not in {directory}"
    if configured:
        pytest.fail(f"{message}, which {GPT2_TOKENIZER_VARIABLE} names")
    if os.environ.get("REQUIRE_ORACLES") == "1":
        pytest.fail(f"{message} and REQUIRE_ORACLES=1 is set")
    pytest.skip(f"{message}: {GPT2_TOKENIZER_HOW_TO}")


@functools.cache  # once per session; the cache also keeps the temporary directory alive until the session ends
def _vocab_and_merges_from(tokenizer_json):
    """GPT-2's vocab.json + merges.txt rebuilt from a Hugging Face tokenizer.json (its merges are "a b"
    strings in older files, ["a", "b"] pairs in newer ones), in a new tempfile.TemporaryDirectory."""
    content = json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))
    vocab = {**content["model"]["vocab"], **{token["content"]: token["id"] for token in content["added_tokens"]}}
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in content["model"]["merges"]]
    directory = tempfile.TemporaryDirectory(prefix="gpt2-tokenizer-")
    (Path(directory.name) / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (Path(directory.name) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n",
                                                     encoding="utf-8")
    return directory


# A small text that both training test modules train on.
CORPUS = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 40


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(CORPUS)
    return path


def run_train_cli(*flags):
    """train.py's main on these flags (any objects: each becomes its str)."""
    import train
    return train.main([str(flag) for flag in flags])


def decoding_steps(model, state, ids, steps, rng):
    """Decode ids (B, T) into `state` (a generation.DecodingState), then `steps` random tokens one at a time; before
    each new token yields the cached logits of the last position and the full forward's for the same sequence."""
    import numpy as np

    from generation import decode
    logits = decode(model, state, ids)
    for _ in range(steps):
        yield logits, model(ids)[:, -1]
        token = rng.integers(0, model.config.vocab_size, (len(ids), 1))
        ids = np.concatenate([ids, token], axis=1)
        logits = decode(model, state, token)


def random_gpt2_model(seed=0, **overrides):
    """A small GPT-2-layout model with every parameter (vectors too) drawn from N(0, 0.5^2), so that any
    misplaced tensor shows; in eval mode."""
    import numpy as np

    from transformer_lm import TransformerConfig, TransformerLM
    fields = dict(vocab_size=31, d_model=12, n_heads=3, n_layers=2, max_seq_len=23, dropout=0.0,
                  positional="learned", norm_first=True, init="gpt2")
    model = TransformerLM(TransformerConfig(**{**fields, **overrides}), seed=seed)
    rng = np.random.default_rng(seed)
    for value in model.parameters().values():
        value[...] = rng.normal(0.0, 0.5, value.shape)
    return model.eval()

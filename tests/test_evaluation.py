"""evaluation.py: strided sliding-window perplexity and bits per byte, checked against transformers.

The oracle is Hugging Face's own recipe ("Perplexity of fixed-length models") run on transformers'
GPT2LMHeadModel loaded from a model we saved: same ids, windows and stride. Its per-window mean losses are
turned back into sums with the number of labels each one averaged, so both sides are exact per-token means.
"""
import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, require_oracle
from hypothesis import given, settings
from hypothesis import strategies as st

import evaluation
from checkpoint import save_checkpoint
from tokenizer import ByteBPETokenizer, CharTokenizer
from transformer_lm import TransformerConfig, TransformerLM

TOLERANCE = 1e-4  # relative, on perplexity and nats per token
CONTEXT = 24      # the GPT-2-layout model's max_seq_len
TEXT = "Naïve café owners sell crème brûlée ✓ to the 日本 tourists; ünïcödé everywhere.\n" * 3


def gpt2_layout_model(vocab_size=41, seed=0):
    """A small random model in GPT-2's layout (so save_pretrained can export it), every parameter drawn
    at random so that a misplaced tensor would change the numbers."""
    config = TransformerConfig(vocab_size=vocab_size, d_model=16, n_heads=2, n_layers=2, max_seq_len=CONTEXT,
                               dropout=0.1, positional="learned", norm_first=True, tie_weights=True,
                               activation="gelu_tanh", init="gpt2")
    model = TransformerLM(config, seed=seed)
    rng = np.random.default_rng(seed)
    for value in model.parameters().values():
        value[...] = rng.normal(0.0, 0.3, value.shape)
    return model


def transformers_sliding_window(hf_model, torch, ids, context, stride):
    """The guide's loop over windows, summing per-token losses: (nats per token, tokens scored, windows run).

    A window whose labels all fall away in the internal shift (a last window of one token when
    stride == context) has nothing to score; the guide would add 0 * NaN there, here it is skipped.
    """
    nll_sum, n_tokens, n_windows, prev_end_loc = 0.0, 0, 0, 0
    for begin_loc in range(0, len(ids), stride):
        end_loc = min(begin_loc + context, len(ids))
        trg_len = end_loc - prev_end_loc
        input_ids = torch.from_numpy(ids[begin_loc:end_loc])[None]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        scored = int((target_ids[:, 1:] != -100).sum())  # the labels the model's mean loss is taken over
        if scored:
            with torch.no_grad():
                nll_sum += float(hf_model(input_ids, labels=target_ids).loss) * scored
            n_tokens += scored
            n_windows += 1
        prev_end_loc = end_loc
        if end_loc == len(ids):
            break
    return nll_sum / n_tokens, n_tokens, n_windows


@pytest.fixture(scope="module")
def hf_pair(tmp_path_factory):
    """(our model, transformers' GPT2LMHeadModel with the same weights, torch)."""
    transformers, torch = require_oracle("transformers"), require_oracle("torch")
    model = gpt2_layout_model()
    directory = tmp_path_factory.mktemp("hf")
    model.save_pretrained(directory)
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(directory).eval()
    return model, hf_model, torch


@pytest.mark.parametrize("n_tokens, context, stride", [
    (72, CONTEXT, CONTEXT),  # disjoint windows, the text a multiple of the stride
    (60, CONTEXT, 8),        # overlapping windows
    (61, CONTEXT, 7),        # a length that is not a multiple of the stride: a short last window
    (49, CONTEXT, CONTEXT),  # disjoint windows and a last window of one token, which scores nothing
    (50, 10, 3),             # a context shorter than max_seq_len
    (15, CONTEXT, 5),        # a text shorter than one window
], ids=["stride=context", "stride<context", "ragged-end", "one-token-tail", "short-context", "short-text"])
def test_perplexity_matches_transformers(hf_pair, n_tokens, context, stride):
    model, hf_model, torch = hf_pair
    ids = np.random.default_rng(n_tokens).integers(0, model.config.vocab_size, n_tokens)
    expected_nats, expected_tokens, expected_windows = transformers_sliding_window(hf_model, torch, ids, context,
                                                                                   stride)
    result = evaluation.evaluate(model, ids, context=context, stride=stride)

    assert (result.tokens_scored, result.windows) == (expected_tokens, expected_windows)
    assert result.nats_per_token == pytest.approx(expected_nats, rel=TOLERANCE)
    assert result.perplexity == pytest.approx(math.exp(expected_nats), rel=TOLERANCE)
    assert (result.context, result.stride) == (context, stride) and result.bits_per_byte is None
    assert model.training  # dropout was off during the evaluation and is back on afterwards


def test_batched_windows_give_the_same_result(hf_pair):
    model, _, _ = hf_pair
    ids = np.random.default_rng(5).integers(0, model.config.vocab_size, 83)
    one = evaluation.evaluate(model, ids, stride=5)
    batched = evaluation.evaluate(model, ids.astype(np.uint16), stride=5, batch_size=4)  # a token file's dtype
    assert batched.nats_per_token == pytest.approx(one.nats_per_token, rel=1e-6)
    assert (batched.tokens_scored, batched.windows) == (one.tokens_scored, one.windows) == (82, 13)


def test_hf_model_cli_reports_transformers_perplexity_and_bytes(hf_pair, tmp_path, capsys):
    """--hf-model end to end: a directory with a byte-level BPE tokenizer, scored as transformers scores it."""
    _, _, torch = hf_pair
    transformers = require_oracle("transformers")
    tokenizer = ByteBPETokenizer.train(TEXT, 290)
    model = gpt2_layout_model(vocab_size=tokenizer.vocab_size, seed=1)
    model.tokenizer = tokenizer
    model.save_pretrained(tmp_path / "hf")
    (tmp_path / "text.txt").write_text(TEXT, encoding="utf-8")
    evaluation.main(["--hf-model", str(tmp_path / "hf"), "--text", str(tmp_path / "text.txt"), "--stride", "10",
                   "--json"])
    report = json.loads(capsys.readouterr().out)

    ids = np.array(tokenizer.encode(TEXT))
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    expected_nats, expected_tokens, _ = transformers_sliding_window(hf_model, torch, ids, CONTEXT, 10)
    assert report["perplexity"] == pytest.approx(math.exp(expected_nats), rel=TOLERANCE)
    assert report["tokens_scored"] == expected_tokens == len(ids) - 1
    # Every token but the first is scored: the bytes are the text's, less those of the first token.
    assert report["bytes"] == len(TEXT.encode("utf-8")) - len(tokenizer.decode_bytes(ids[:1]))
    assert report["bits_per_byte"] == pytest.approx(expected_nats * expected_tokens / math.log(2) / report["bytes"],
                                                    rel=TOLERANCE)


# ------------------------------------------------------------------------------------------------------------
# Without transformers: the windows themselves, bits per byte on a character model, the CLI


def test_windows_follow_the_guide_on_a_small_example():
    # 10 tokens, windows of 4 every 2: [0, 4) scores targets 1..3, [2, 6) 4..5, [4, 8) 6..7, [6, 10) 8..9.
    assert [(w.begin, w.end, w.first_scored) for w in evaluation.sliding_windows(10, 4, 2)] == [
        (0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8)]
    # Disjoint windows: each window's first token has no context; a one-token tail scores nothing.
    assert [(w.begin, w.end, w.first_scored) for w in evaluation.sliding_windows(9, 4, 4)] == [
        (0, 4, 1), (4, 8, 5)]


@settings(max_examples=60, deadline=None, database=None)
@given(n_tokens=st.integers(2, 80), context=st.integers(2, 20), data=st.data())
def test_every_target_is_scored_at_most_once(n_tokens, context, data):
    stride = data.draw(st.integers(1, context))
    counts = np.zeros(n_tokens, dtype=int)
    for window in evaluation.sliding_windows(n_tokens, context, stride):
        assert window.end - window.begin <= context and window.begin < window.first_scored < window.end + 1
        counts[window.first_scored:window.end] += 1
    assert counts.max() == 1 and counts[0] == 0
    if stride < context:
        assert counts[1:].min() == 1  # overlapping windows leave no target out


def char_model(text=TEXT, seed=0):
    tokenizer = CharTokenizer.from_text(text)
    return TransformerLM(TransformerConfig(vocab_size=tokenizer.vocab_size, d_model=16, n_heads=2, n_layers=1,
                                           max_seq_len=32, dropout=0.0), seed=seed), tokenizer


def test_bits_per_byte_of_a_character_model():
    """Disjoint windows of 16 characters, checked against the model's own logits scored chunk by chunk, and
    against the UTF-8 bytes of the characters that were predicted (the text is mostly multi-byte)."""
    model, tokenizer = char_model()
    ids = np.array(tokenizer.encode(TEXT))
    result = evaluation.evaluate_text(model, tokenizer, TEXT, context=16)

    nats, tokens = 0.0, 0
    for begin in range(0, len(ids), 16):
        chunk = ids[begin:begin + 16]
        if len(chunk) < 2:
            continue
        logits = model(chunk[None, :-1])[0].astype(np.float64)                    # (T, V)
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        nats -= log_probs[np.arange(len(chunk) - 1), chunk[1:]].sum()
        tokens += len(chunk) - 1
    scored_bytes = sum(len(char.encode("utf-8")) for position, char in enumerate(TEXT) if position % 16)
    assert scored_bytes > tokens  # multi-byte characters: bytes and characters differ

    assert (result.tokens_scored, result.bytes, result.stride) == (tokens, scored_bytes, 16)
    assert result.nats_per_token == pytest.approx(nats / tokens, rel=1e-5)
    assert result.bits_per_byte == pytest.approx(nats / math.log(2) / scored_bytes, rel=1e-5)


@pytest.fixture
def char_checkpoint(tmp_path):
    model, tokenizer = char_model()
    save_checkpoint(tmp_path / "ckpt", model, tokenizer=tokenizer)
    (tmp_path / "text.txt").write_text(TEXT, encoding="utf-8")
    return tmp_path / "ckpt", tmp_path / "text.txt"


def test_json_output(char_checkpoint, capsys):
    checkpoint, text = char_checkpoint
    evaluation.main(["--checkpoint", str(checkpoint), "--text", str(text), "--stride", "8", "--batch-size", "4",
                   "--json"])
    report = json.loads(capsys.readouterr().out)
    model, tokenizer = char_model()
    expected = evaluation.evaluate_text(model, tokenizer, TEXT, stride=8)
    assert report == pytest.approx({"nats_per_token": expected.nats_per_token, "perplexity": expected.perplexity,
                                    "bits_per_byte": expected.bits_per_byte, "tokens_scored": len(TEXT) - 1,
                                    "bytes": len(TEXT.encode("utf-8")) - 1, "windows": expected.windows,
                                    "context": 32, "stride": 8, "source": str(text), "model": str(checkpoint)},
                                   rel=1e-6)


def test_table_output_from_the_command_line(char_checkpoint):
    checkpoint, text = char_checkpoint
    run = subprocess.run([sys.executable, str(ROOT / "evaluation.py"), "--checkpoint", str(checkpoint),
                          "--text", str(text)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    model, tokenizer = char_model()
    expected = evaluation.evaluate_text(model, tokenizer, TEXT)
    perplexity = re.search(r"^perplexity +([0-9.]+)$", run.stdout, re.MULTILINE)
    bits_per_byte = re.search(r"^bits per byte +([0-9.]+)$", run.stdout, re.MULTILINE)
    assert float(perplexity.group(1)) == pytest.approx(expected.perplexity, abs=1e-4)
    assert float(bits_per_byte.group(1)) == pytest.approx(expected.bits_per_byte, abs=1e-4)


@pytest.mark.parametrize("flags, text, message", [
    ([], None, "does not exist"),
    ([], "", "empty"),
    ([], "N", "1 token"),
    ([], "Naïve ✗", "not in the vocabulary"),
    (["--stride", "0"], TEXT, "stride must be between 1 and the context"),
    (["--context", "8", "--stride", "9"], TEXT, "stride must be between 1 and the context"),
    (["--context", "33"], TEXT, "max_seq_len 32"),
    (["--context", "1"], TEXT, "context must be between 2"),
    (["--batch-size", "0"], TEXT, "batch_size must be a positive integer"),
], ids=["missing-file", "empty", "one-token", "unknown-character", "stride-0", "stride>context",
        "context>max_seq_len", "context-1", "batch-0"])
def test_bad_input_is_one_error_line(char_checkpoint, flags, text, message):
    checkpoint, text_file = char_checkpoint
    if text is None:
        text_file = text_file.with_name("absent.txt")
    else:
        text_file.write_text(text, encoding="utf-8")
    with pytest.raises(SystemExit) as raised:
        evaluation.main(["--checkpoint", str(checkpoint), "--text", str(text_file), *flags])
    assert str(raised.value).startswith("error: ") and message in str(raised.value)


def test_unreadable_sources_are_one_error_line(char_checkpoint, tmp_path):
    checkpoint, text_file = char_checkpoint
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    save_checkpoint(tmp_path / "bare", char_model()[0])  # no tokenizer
    for argv, message in [
        (["--checkpoint", str(checkpoint), "--text", str(tmp_path)], "is a directory"),
        (["--checkpoint", str(checkpoint), "--text", str(tmp_path / "latin1.txt")], "not UTF-8"),
        (["--checkpoint", str(tmp_path / "nowhere"), "--text", str(text_file)], "cannot load the model"),
        (["--hf-model", str(tmp_path / "nowhere"), "--text", str(text_file)], "cannot load the model"),
        (["--checkpoint", str(tmp_path / "bare"), "--text", str(text_file)], "no tokenizer"),
    ]:
        with pytest.raises(SystemExit) as raised:
            evaluation.main(argv)
        assert str(raised.value).startswith("error: ") and message in str(raised.value), argv


def test_command_line_error_has_no_traceback(char_checkpoint):
    checkpoint, text = char_checkpoint
    run = subprocess.run([sys.executable, str(ROOT / "evaluation.py"), "--checkpoint", str(checkpoint),
                          "--text", str(text), "--stride", "99"], capture_output=True, text=True)
    assert run.returncode != 0 and run.stdout == ""
    assert run.stderr.strip().splitlines() == ["error: stride must be between 1 and the context (32), got 99"]


@pytest.mark.parametrize("ids, error", [
    (np.array([1.0, 2.0]), TypeError),
    (np.zeros((2, 3), dtype=int), ValueError),
    (np.array([3]), ValueError),
    (np.array([0, 5, -1]), ValueError),
    (np.array([0, 41]), ValueError),
], ids=["float", "2-d", "one-id", "negative", "past-vocabulary"])
def test_library_refuses_bad_token_arrays(ids, error):
    with pytest.raises(error, match="ids|token"):
        evaluation.evaluate(gpt2_layout_model(), ids)


def test_non_finite_weights_are_an_error_not_a_number():
    model = gpt2_layout_model()
    model.parameters()["decoder.token_embedding.weight"][3] = np.nan
    with pytest.raises(ValueError, match="not finite"):
        evaluation.evaluate(model, np.arange(10))


def test_default_batch_is_wide_for_small_models_and_one_window_for_gpt2():
    gpt2 = TransformerConfig.from_preset("gpt2")
    assert evaluation.default_batch_size(gpt2, gpt2.max_seq_len) == 1
    assert evaluation.default_batch_size(TransformerConfig.from_preset("nanogpt-cpu"), 64) > 8


def test_ids_the_tokenizer_cannot_have_produced_are_refused():
    model, tokenizer = char_model()
    wider = TransformerLM(TransformerConfig(vocab_size=tokenizer.vocab_size + 5, d_model=8, n_heads=2, n_layers=1,
                                            max_seq_len=16), seed=0)
    with pytest.raises(ValueError, match="not produced by this tokenizer"):
        evaluation.evaluate(wider, np.array([0, 1, tokenizer.vocab_size + 2]), tokenizer)

"""Hostile inputs to generation (issue 10): stale loss caches, a stream left open, tiny temperatures and
non-finite logits, junk arguments, memory that follows the tokens produced, prompts longer than the context."""
import math
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
from conftest import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

import generate
import generation
import visualize
from checkpoint import save_checkpoint
from generation import DecodingState, decode, greedy_without_cache, next_token_probabilities, sample_next
from tokenizer import CharTokenizer
from transformer_lm import TransformerConfig, TransformerLM

FEW_EXAMPLES = settings(max_examples=40, deadline=None, database=None)
VOCAB = 23


def make_model(seed=0, **overrides):
    config = dict(vocab_size=VOCAB, d_model=16, n_heads=4, n_layers=2, max_seq_len=24, dropout=0.1, init="gpt2")
    return TransformerLM(TransformerConfig(**{**config, **overrides}), seed=seed)


def batch(seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, VOCAB, (2, 6)), rng.integers(0, VOCAB, (2, 6))


# --- 1. A pass through the decoder invalidates a pending loss(); a stream never leaves eval mode behind.

PASSES_THROUGH_THE_DECODER = {
    "generate": lambda model: model.generate([[5, 6], [7]], 1),
    "stream, one token taken": lambda model: next(model.stream([5, 6], 10)),
    "stream, exhausted": lambda model: list(model.stream(np.array([5, 6]), 3, temperature=0)),
    "generation.decode": lambda model: decode(model, DecodingState(model, 1, 4), np.array([[1, 2]])),
    "greedy_without_cache": lambda model: greedy_without_cache(model, np.array([[1, 2]]), 2),
    "visualize.attention_weights": lambda model: visualize.attention_weights(model, np.array([[1, 2, 3]])),
    "forward": lambda model: model(np.array([[1, 2]])),
}


@pytest.mark.parametrize("name", PASSES_THROUGH_THE_DECODER)
def test_any_pass_through_the_decoder_between_loss_and_backward_is_refused(name):
    model = make_model(dropout=0.0)
    ids, targets = batch()
    model.loss(ids, targets)
    PASSES_THROUGH_THE_DECODER[name](model)
    with pytest.raises(RuntimeError, match="needs a preceding loss.*no pass through the model since"):
        model.backward()
    # The refusal is not sticky: a fresh loss() gives the same gradients as a model that never generated.
    model.loss(ids, targets)
    fresh = make_model(dropout=0.0)
    fresh.loss(ids, targets)
    expected = fresh.backward()
    for key, gradient in model.backward().items():
        np.testing.assert_array_equal(gradient, expected[key], err_msg=key)


@pytest.mark.parametrize("mode", [True, False])
def test_a_stream_left_open_leaves_the_model_in_its_own_mode(mode):
    model = make_model().train(mode)
    tokens = model.stream([[1, 2, 3], [4]], 10, seed=0)
    next(tokens)
    assert model.training is mode
    assert all(module.training is mode for _, module in model.named_modules())
    next(tokens)
    assert model.training is mode
    del tokens  # abandoned half-way
    assert model.training is mode


def test_every_step_is_computed_without_dropout_whatever_the_mode_between_tokens():
    model = make_model(dropout=0.5)
    reference = [token.tolist() for token in model.eval().stream([[1, 2, 3], [4]], 8, seed=3)]
    tokens = model.train().stream([[1, 2, 3], [4]], 8, seed=3)
    produced = []
    for step, token in enumerate(tokens):
        produced.append(token.tolist())
        model.train(step % 2 == 0)  # the caller flips the mode between tokens
    assert produced == reference


# --- 2. Tiny (and huge) temperatures, non-finite logits.

@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("temperature", [1e-30, 1e-38, 1e-39, 1e-45, 1e-300, 5e-324])
def test_tiny_temperatures_are_greedy_never_nan(dtype, temperature):
    model = make_model(dtype=dtype, init="xavier")
    greedy = model.generate([[4, 2], [9, 9, 1]], 12, temperature=0)
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # no NaN, no stray overflow warning
        assert model.generate([[4, 2], [9, 9, 1]], 12, temperature=temperature, seed=1) == greedy
    assert any(token != 0 for row in greedy for token in row)  # the greedy reference is not all zeros


def test_the_distribution_tends_to_the_argmax_as_temperature_falls():
    logits = np.array([[0.0, 3.0, 3.0 - 1e-6, -50.0]], dtype=np.float32)
    for temperature in (1e-3, 1e-8, 1e-20, 1e-38, 1e-40, 5e-324):
        probabilities = next_token_probabilities(logits, temperature)
        assert np.all(np.isfinite(probabilities))
        assert probabilities[0, 1] == probabilities.max() and math.isclose(probabilities.sum(), 1.0, rel_tol=1e-6)
    np.testing.assert_array_equal(next_token_probabilities(logits, 1e-30), [[0.0, 1.0, 0.0, 0.0]])
    np.testing.assert_allclose(next_token_probabilities(logits, 1e300), [[0.25] * 4])  # huge: uniform


@FEW_EXAMPLES
@given(logits=st.lists(st.floats(-2.0**100, 2.0**100, width=32), min_size=2, max_size=12),
       temperature=st.floats(min_value=5e-324, max_value=1e308, exclude_min=False),
       top_k=st.none() | st.integers(1, 12), top_p=st.none() | st.floats(0.01, 1.0))
def test_sampling_is_a_distribution_for_every_finite_positive_temperature(logits, temperature, top_k, top_p):
    logits = np.array([logits], dtype=np.float32)
    probabilities = next_token_probabilities(logits, temperature, top_k, top_p)
    assert np.all(np.isfinite(probabilities)) and np.all(probabilities >= 0)
    assert math.isclose(probabilities.sum(), 1.0, rel_tol=1e-5)
    before_top_p = next_token_probabilities(logits, temperature, top_k)[0]
    assert before_top_p[logits[0].argmax()] == before_top_p.max()   # the most likely token stays the most likely
    kept = probabilities[0] > 0
    assert before_top_p[kept].min() >= before_top_p[~kept].max(initial=0.0)   # top-p keeps the most likely ones
    token = sample_next(logits, temperature, top_k, top_p, np.random.default_rng(0))
    assert probabilities[0, token[0]] > 0


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # the model's own NaN arithmetic
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("temperature", [0, 1.0])
def test_non_finite_weights_raise_naming_the_step_never_token_zero(bad, temperature):
    model = make_model()
    model.parameters()["decoder.blocks.0.attention.W_qkv"][0, :] = bad
    with pytest.raises(ValueError, match=r"logits at generation step 0 .*contain NaN or infinity"):
        model.generate([1, 2], 3, temperature=temperature)


def test_a_non_finite_step_later_on_is_named(monkeypatch):
    calls = []

    def decode_turning_nan(model, state, ids, *rest):
        logits = decode(model, state, ids, *rest)
        calls.append(ids.shape)
        return np.full_like(logits, np.nan) if len(calls) == 4 else logits

    monkeypatch.setattr(generation, "decode", decode_turning_nan)
    tokens = make_model().stream([[1, 2], [3]], 10, seed=0)
    assert len([next(tokens) for _ in range(3)]) == 3
    with pytest.raises(ValueError, match=r"generation step 3 .* in rows \[0, 1\]"):
        next(tokens)


def test_sample_next_refuses_non_finite_logits_itself():
    with pytest.raises(ValueError, match=r"contain NaN or infinity in rows \[1\]"):
        sample_next(np.array([[0.0, 1.0], [np.inf, 0.0]]), 1.0, None, None, np.random.default_rng(0))


# --- 3. Stop tokens read once, junk arguments refused.

@pytest.mark.parametrize("as_stop_tokens", [list, iter, lambda tokens: (token for token in tokens), set, tuple,
                                            lambda tokens: np.array(tokens, dtype=np.uint8)],
                         ids=["list", "iterator", "generator", "set", "tuple", "uint8 array"])
def test_stop_tokens_in_any_iterable_cut_list_rows_after_their_stop(as_stop_tokens):
    model = make_model(dtype="float64")
    prompts = [[1, 2], [3, 4, 5]]
    free = model.generate(prompts, 10, temperature=0)
    stop = free[0][4]   # generated in row 0
    result = model.generate(prompts, 10, temperature=0, stop_tokens=as_stop_tokens([stop]))
    for prompt, free_row, row in zip(prompts, free, result):
        generated = free_row[len(prompt):]
        assert row == prompt + (generated[: generated.index(stop) + 1] if stop in generated else generated)
    assert result[0][-1] == stop and len(result[0]) < len(free[0])


BAD_ARGUMENTS = [
    (dict(stop_tokens=5), TypeError, "stop_tokens must be None or an iterable"),
    (dict(stop_tokens="ab"), TypeError, "stop_tokens must be None or an iterable"),
    (dict(stop_tokens=b"ab"), TypeError, "stop_tokens must be None or an iterable"),
    (dict(stop_tokens=np.array(3)), TypeError, "stop_tokens must be None or an iterable"),
    (dict(stop_tokens=[None]), TypeError, "stop_tokens must hold integer token ids, got None"),
    (dict(stop_tokens=[1.7]), TypeError, "stop_tokens must hold integer token ids, got 1.7"),
    (dict(stop_tokens=[True]), TypeError, "stop_tokens must hold integer token ids, got True"),
    (dict(stop_tokens=np.array([1.0, 2.0])), TypeError, "stop_tokens must hold integer token ids"),
    (dict(stop_tokens=np.array([[1, 2]])), TypeError, "stop_tokens must hold integer token ids"),
    (dict(stop_tokens=[2**70]), ValueError, f"stop token {2**70} is out of range"),
    (dict(stop_tokens=[-1]), ValueError, r"stop token -1 is out of range \[0, 23\)"),
    (dict(stop_tokens=[VOCAB]), ValueError, "stop token 23 is out of range"),
    (dict(seed=-1), ValueError, "seed must be None, an integer >= 0 or a np.random.Generator, got -1"),
    (dict(seed="x"), TypeError, "seed must be None, an integer >= 0"),
    (dict(seed=1.5), TypeError, "seed must be None, an integer >= 0"),
    (dict(seed=True), TypeError, "seed must be None, an integer >= 0"),
    (dict(temperature=float("nan")), ValueError, "temperature must be a number >= 0 .* finite, got nan"),
    (dict(temperature=float("inf")), ValueError, "temperature must be a number >= 0 .* finite, got inf"),
    (dict(temperature=-1e-300), ValueError, "temperature must be a number >= 0"),
    (dict(temperature=True), TypeError, "temperature must be a number"),
    (dict(temperature="0.8"), TypeError, "temperature must be a number"),
    (dict(temperature=None), TypeError, "temperature must be a number"),
    (dict(top_p=float("nan")), ValueError, r"top_p must be in \(0, 1\]"),
    (dict(top_p=float("inf")), ValueError, r"top_p must be in \(0, 1\]"),
    (dict(top_p=True), TypeError, r"top_p must be in \(0, 1\]"),
    (dict(top_p="0.9"), TypeError, r"top_p must be in \(0, 1\]"),
    (dict(top_k=True), TypeError, "top_k must be an integer >= 1"),
    (dict(top_k=2.0), TypeError, "top_k must be an integer >= 1"),
    (dict(top_k=-3), ValueError, "top_k must be an integer >= 1"),
    (dict(max_new_tokens="3"), TypeError, "max_new_tokens must be an integer >= 0"),
    (dict(max_new_tokens=2.5), TypeError, "max_new_tokens must be an integer >= 0"),
    (dict(max_new_tokens=True), TypeError, "max_new_tokens must be an integer >= 0"),
    (dict(max_new_tokens=10**30), ValueError, "more than max_seq_len 24"),  # learned positions, no crop
]


@pytest.mark.parametrize("options,error,message", BAD_ARGUMENTS)
def test_bad_generation_arguments_are_clear_errors(options, error, message):
    model = make_model(positional="learned")
    arguments = {"max_new_tokens": 3, **options}
    with pytest.raises(error, match=message):
        model.generate([[1, 2], [3]], **arguments)
    with pytest.raises(error, match=message):
        model.stream([[1, 2], [3]], **arguments)  # checked at the call, before the first token


@pytest.mark.parametrize("prompt,error,message", [
    (np.array(5), ValueError, r"the prompt must be a \(T,\) or \(B, T\) array .* of shape \(\)"),
    (5, ValueError, r"the prompt must be a \(T,\) or \(B, T\) array .*, got int of shape \(\)"),
    (None, ValueError, r"the prompt must be a \(T,\) or \(B, T\) array"),
    ("abc", TypeError, "must be token ids, not text"),
    (b"abc", TypeError, "must be token ids, not text"),
    (["ab", "c"], TypeError, "must be an integer array of token ids"),
    ([[1, 2], 3], TypeError, "must be a sequence of token ids or of equal-length sequences"),
    ([[1, [2]]], TypeError, "prompt 0 must be a sequence of token ids"),
    ([[[1, 2]]], ValueError, r"prompt 0 must be a flat sequence of token ids, got shape \(1, 2\)"),
    (np.zeros((1, 2, 2), dtype=int), ValueError, r"got ndarray of shape \(1, 2, 2\)"),
    ([1.7], TypeError, "must be an integer array of token ids, got dtype float64"),
    ([[1.7]], TypeError, "prompt 0 must be an integer array of token ids"),
    ([[1, 2], [3.0]], TypeError, "prompt 1 must be an integer array of token ids"),
    ([2**70], TypeError, "must be an integer array of token ids"),
    ([True, False], TypeError, "must be an integer array of token ids"),
    ([[1, 2], [None]], TypeError, "prompt 1 must be an integer array"),
    ([[1], [VOCAB]], ValueError, "token id 23 at prompt 1"),
    (iter([1, 2]), ValueError, r"the prompt must be a \(T,\) or \(B, T\) array"),
])
def test_bad_prompts_are_clear_errors(prompt, error, message):
    model = make_model()
    with pytest.raises(error, match=message):
        model.generate(prompt, 3)
    with pytest.raises(error, match=message):
        model.stream(prompt, 3)


def test_integer_numpy_stop_tokens_and_seeds_work():
    model = make_model(dtype="float64")
    as_list = model.generate([[1, 2], [3]], 8, seed=4, stop_tokens=[5, 6])
    assert model.generate([[1, 2], [3]], 8, seed=np.int64(4), stop_tokens=np.array([5, 6])) == as_list
    assert model.generate([[1, 2], [3]], 8, seed=np.random.default_rng(4), stop_tokens=range(5, 7)) == as_list


PROMPTS = (st.lists(st.integers(-2, VOCAB + 1), max_size=4)
           | st.lists(st.lists(st.integers(0, VOCAB - 1), max_size=3), max_size=3)
           | st.lists(st.floats(allow_nan=True) | st.integers(0, 5) | st.none() | st.text(max_size=2), max_size=3)
           | st.text(max_size=3) | st.integers() | st.none())
JUNK = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=3)
STOP_TOKENS = (JUNK | st.lists(JUNK, max_size=3) | st.lists(st.integers(-1, VOCAB), max_size=3).map(iter)
               | st.lists(st.integers(0, VOCAB - 1), max_size=3).map(np.array))


@FEW_EXAMPLES
@given(prompt=PROMPTS, stop_tokens=STOP_TOKENS, seed=JUNK, temperature=JUNK | st.floats(0, 3),
       top_k=JUNK, top_p=JUNK | st.floats(0, 1), max_new_tokens=JUNK | st.integers(0, 4))
def test_random_arguments_give_a_clear_error_or_a_valid_result(prompt, stop_tokens, seed, temperature, top_k,
                                                               top_p, max_new_tokens):
    model = make_model(positional="learned")
    try:
        result = model.generate(prompt, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                stop_tokens=stop_tokens, seed=seed)
    except (TypeError, ValueError) as error:
        assert len(str(error)) > 10
        return
    rows = result if isinstance(result, list) else np.atleast_2d(result).tolist()
    prompts = prompt if isinstance(result, list) else np.atleast_2d(prompt).tolist()
    assert len(rows) == len(prompts)
    for given_prompt, row in zip(prompts, rows):
        assert row[:len(given_prompt)] == list(given_prompt) and len(row) <= len(given_prompt) + max_new_tokens
        assert all(isinstance(token, int) and 0 <= token < VOCAB for token in row)


# --- 7. Memory follows the tokens produced.

def test_a_huge_max_new_tokens_costs_what_is_produced():
    model = TransformerLM(TransformerConfig(vocab_size=11, d_model=8, n_heads=2, n_layers=2, max_seq_len=16), seed=0)
    tracemalloc.start()
    try:
        tokens = list(model.stream(np.array([1, 2]), 10**7, stop_tokens=range(11)))   # the reproducer
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(tokens) == 1       # every token is a stop token
    assert peak < 2_000_000       # bytes; it reserved about 1.4 GB before
    assert len(model.generate([[1, 2], [3]], 10**30, stop_tokens=range(11))[0]) == 3


def test_the_kv_cache_grows_with_the_tokens_fed_not_the_capacity():
    model = make_model().eval()
    state = DecodingState(model, 2, 10**9)
    decode(model, state, np.array([[1, 2, 3], [4, 5, 6]]))
    for token in range(5):
        decode(model, state, np.full((2, 1), token))
    for cache in state.kv_caches:
        assert cache.length == 8 and 8 <= cache.keys.shape[2] <= 16 and cache.positions.shape[1] == cache.keys.shape[2]


@pytest.mark.parametrize("pattern", [dict(), dict(attention="sliding", window=4), dict(attention="strided", stride=3)])
def test_kv_decoding_across_several_growths_equals_full_recompute_for_ragged_batches(pattern):
    model = make_model(dtype="float64", init="xavier", max_seq_len=64, **pattern).eval()
    prompts = [[3, 1, 4], [1], [5, 9]]             # left-padded to 3 columns; the caches hold 3, 6, 12, 24, 48
    batch = model.generate(prompts, 40, temperature=0)
    for prompt, row in zip(prompts, batch):
        np.testing.assert_array_equal(row, greedy_without_cache(model, np.array([prompt]), 40)[0])
    state = DecodingState(model, 3, 3 + 40)
    decode(model, state, *generation.left_pad(prompts))
    sizes = {state.kv_caches[0].keys.shape[2]}
    for step in range(39):
        decode(model, state, np.array([[row[len(prompt) + step]] for prompt, row in zip(prompts, batch)]))
        sizes.add(state.kv_caches[0].keys.shape[2])
    # Doubling up to the capacity (43); a rolling cache stays at its window.
    assert sizes == ({4} if "window" in pattern else {3, 6, 12, 24, 43})


# --- The prompt is cropped too: crop_context conditions on the last max_seq_len tokens.

def nanogpt_greedy(model, prompt, steps):
    ids = list(prompt)
    for _ in range(steps):
        ids.append(int(model(np.array([ids[-model.config.max_seq_len:]]))[0, -1].argmax()))
    return ids


def test_a_prompt_longer_than_the_context_is_cropped_with_crop_context():
    model = make_model(positional="learned", dtype="float64", max_seq_len=8).eval()
    prompts = [list(range(1, 20)), [4, 5, 6]]
    with pytest.raises(ValueError, match="exceeds max_seq_len 8"):
        model.generate(prompts, 5, temperature=0)
    generated = model.generate(prompts, 5, temperature=0, crop_context=True)
    for prompt, row in zip(prompts, generated):
        assert row == nanogpt_greedy(model, prompt, 5)     # the whole prompt comes back, then the new tokens
    one_d = model.generate(np.arange(1, 20), 4, temperature=0, crop_context=True)
    assert one_d.tolist() == nanogpt_greedy(model, range(1, 20), 4)
    streamed = [int(token[0]) for token in model.stream(np.arange(1, 20), 4, temperature=0, crop_context=True)]
    assert streamed == one_d[19:].tolist()
    with pytest.raises(ValueError, match="token id 99"):   # the cropped-off part is still checked
        model.generate([99] + list(range(1, 20)), 2, crop_context=True)


@pytest.fixture
def learned_checkpoint(tmp_path):
    tokenizer = CharTokenizer.from_text("hello world, this is a tiny corpus.\n")
    model = TransformerLM(TransformerConfig(vocab_size=tokenizer.vocab_size, d_model=16, n_heads=2, n_layers=1,
                                            max_seq_len=8, positional="learned"), seed=0)
    save_checkpoint(tmp_path / "ckpt", model, tokenizer=tokenizer)
    return tmp_path / "ckpt", model, tokenizer


def test_the_cli_crops_a_prompt_longer_than_the_context(learned_checkpoint):
    directory, model, tokenizer = learned_checkpoint
    prompt = "hello world, this is"    # 20 characters, max_seq_len 8
    completed = subprocess.run([sys.executable, str(ROOT / "generate.py"), "--checkpoint", str(directory),
                                "--prompt", prompt, "--max-new-tokens", "12", "--temperature", "0"],
                               capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == tokenizer.decode(nanogpt_greedy(model.eval(), tokenizer.encode(prompt), 12)) + "\n"


@pytest.mark.parametrize("flags,message", [
    (["--seed", "-1"], "error: seed must be None, an integer >= 0"),
    (["--temperature", "nan"], "error: temperature must be a number >= 0 (0 means greedy) and finite, got nan"),
    (["--top-p", "inf"], "error: top_p must be in (0, 1]"),
    (["--max-new-tokens", "-5"], "error: max_new_tokens must be an integer >= 0"),
])
def test_cli_argument_errors_are_one_line(learned_checkpoint, flags, message):
    directory, _, _ = learned_checkpoint
    with pytest.raises(SystemExit) as raised:
        generate.main(["--checkpoint", str(directory), "--prompt", "hi", *flags])
    assert str(raised.value).startswith(message)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # the model's own NaN arithmetic
def test_cli_non_finite_model_is_one_line(learned_checkpoint, monkeypatch, capsys):
    _, model, tokenizer = learned_checkpoint
    model.parameters()["decoder.token_embedding.weight"][:] = np.nan
    monkeypatch.setattr(generate, "load_model_and_tokenizer", lambda *args, **kwargs: (model, tokenizer))
    with pytest.raises(SystemExit) as raised:
        generate.main(["--checkpoint", "unused", "--prompt", "hi"])
    assert str(raised.value).startswith("error: the logits at generation step 0")
    assert capsys.readouterr().out == "hi\n"

import numpy as np
import pytest
from conftest import decoding_steps

from generation import DecodingState, decode, greedy_without_cache, left_pad, next_token_probabilities, sample_next
from transformer_lm import TransformerConfig, TransformerLM

VARIANTS = [dict(norm_first=norm_first, positional=positional)
            for norm_first in (False, True) for positional in ("sinusoidal", "learned")]
VARIANTS.append(dict(norm_first=True, positional="learned", norm="rmsnorm", activation="swiglu", bias=False))


def make_model(seed=0, **overrides):
    config = dict(vocab_size=23, d_model=16, n_heads=4, n_layers=2, max_seq_len=24, dropout=0.1, init="gpt2")
    return TransformerLM(TransformerConfig(**{**config, **overrides}), seed=seed)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype,bound", [("float32", 1e-5), ("float64", 1e-10)])
def test_cached_logits_equal_the_full_forward_at_every_step(variant, dtype, bound):
    model = make_model(dtype=dtype, **variant).eval()
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 23, (3, 5))
    for logits, full in decoding_steps(model, DecodingState(model, 3, 5 + 12), ids, 12, rng):
        assert np.abs(logits - full).max() <= bound * np.abs(full).max()


@pytest.mark.parametrize("variant", VARIANTS)
def test_left_padded_batch_matches_each_prompt_alone(variant):
    model = make_model(dtype="float64", **variant)
    prompts = [[3, 1, 4, 1, 5, 9, 2], [6], [5, 3, 5]]
    batch = model.generate(prompts, 8, temperature=0)
    for prompt, row in zip(prompts, batch):
        assert row == model.generate([prompt], 8, temperature=0)[0]
        np.testing.assert_array_equal(row, greedy_without_cache(model.eval(), np.array([prompt]), 8)[0])


@pytest.mark.parametrize("variant", VARIANTS)
def test_left_padded_logits_match_each_prompt_alone(variant):
    model = make_model(dtype="float64", init="xavier", **variant).eval()
    prompts = [[3, 1, 4, 1, 5, 9, 2], [6], [5, 3, 5]]
    ids, key_padding, positions = left_pad(prompts)
    batch_state = DecodingState(model, 3, 7 + 4)
    batch_logits = decode(model, batch_state, ids, key_padding, positions)
    alone_states = [DecodingState(model, 1, len(prompt) + 4) for prompt in prompts]
    alone_logits = [decode(model, state, np.array([prompt])) for state, prompt in zip(alone_states, prompts)]
    for step in range(4):
        for row in range(3):
            np.testing.assert_allclose(batch_logits[row], alone_logits[row][0], atol=1e-10)
        tokens = np.array([[step], [step + 2], [step + 4]])
        batch_logits = decode(model, batch_state, tokens)
        alone_logits = [decode(model, state, tokens[row:row + 1]) for row, state in enumerate(alone_states)]


def test_left_pad_layout():
    ids, key_padding, positions = left_pad([[7, 8, 9], [5]], pad_id=0)
    np.testing.assert_array_equal(ids, [[7, 8, 9], [0, 0, 5]])
    np.testing.assert_array_equal(key_padding, [[False, False, False], [True, True, False]])
    np.testing.assert_array_equal(positions[1, -1], 0)
    np.testing.assert_array_equal(positions[0], [0, 1, 2])


def test_generate_keeps_the_input_form_and_restores_training_mode():
    model = make_model().train()
    two_d = model.generate(np.array([[1, 2], [3, 4]]), 3, seed=0)
    assert isinstance(two_d, np.ndarray) and two_d.shape == (2, 5)
    np.testing.assert_array_equal(two_d[:, :2], [[1, 2], [3, 4]])
    one_d = model.generate(np.array([1, 2]), 3, seed=0)
    assert one_d.shape == (5,)
    assert model.training


def test_same_seed_same_output_and_stream_matches_generate():
    model = make_model()
    first = model.generate([1, 2, 3], 15, seed=7)
    np.testing.assert_array_equal(first, model.generate([1, 2, 3], 15, seed=7))
    streamed = [int(token[0]) for token in model.stream([1, 2, 3], 15, seed=7)]
    assert streamed == first[3:].tolist()
    assert not np.array_equal(first, model.generate([1, 2, 3], 15, seed=8))


def test_temperature_zero_is_greedy_and_tiny_temperature_matches_it():
    model = make_model(dtype="float64")
    greedy = model.generate([4, 2], 10, temperature=0)
    np.testing.assert_array_equal(greedy, greedy_without_cache(model.eval(), np.array([[4, 2]]), 10)[0])
    np.testing.assert_array_equal(model.generate([4, 2], 10, temperature=1e-8, seed=3), greedy)


def test_top_k_never_leaves_the_k_most_likely_tokens():
    model = make_model(dtype="float64").eval()
    for seed in range(5):
        ids = model.generate([5, 6, 7], 10, top_k=3, temperature=2.0, seed=seed)
        logits = model(ids[None, :-1])[0]
        for position in range(2, len(ids) - 1):
            top3 = np.argsort(logits[position])[-3:]
            assert ids[position + 1] in top3


def test_top_p_keeps_the_smallest_set_reaching_p():
    probabilities = np.array([[0.05, 0.5, 0.15, 0.3]])
    logits = np.log(probabilities)
    for top_p, kept in [(0.5, {1}), (0.7, {1, 3}), (0.81, {1, 3, 2}), (1.0, {0, 1, 2, 3})]:
        result = next_token_probabilities(logits, 1.0, top_p=top_p)[0]
        assert set(np.flatnonzero(result)) == kept
        expected = probabilities[0, list(kept)]
        np.testing.assert_allclose(result[list(kept)], expected / expected.sum())


def test_sampling_follows_the_distribution():
    probabilities = np.array([0.1, 0.0, 0.6, 0.3])
    logits = np.tile(np.log(np.maximum(probabilities, 1e-300)), (20000, 1))
    draws = sample_next(logits, 1.0, None, None, np.random.default_rng(0))
    frequencies = np.bincount(draws, minlength=4) / len(draws)
    np.testing.assert_allclose(frequencies, probabilities, atol=0.015)
    assert frequencies[1] == 0


def test_stop_tokens_end_generation():
    model = make_model(dtype="float64")
    free = model.generate([[1, 2]], 10, temperature=0)[0]
    stop = free[4]
    stopped = model.generate([[1, 2]], 10, temperature=0, stop_tokens=[stop])[0]
    assert stopped == free[: free.index(stop, 2) + 1]


def test_sinusoidal_generation_goes_past_max_seq_len_and_learned_refuses():
    assert len(make_model(positional="sinusoidal").generate([1] * 20, 10, seed=0)) == 30
    learned = make_model(positional="learned")
    assert len(learned.generate([1] * 20, 5, seed=0)) == 25  # feeds 24 positions: exactly max_seq_len
    with pytest.raises(ValueError, match="needs 25 positions, more than max_seq_len 24"):
        learned.generate([1] * 20, 6, seed=0)


@pytest.mark.parametrize("options,message", [
    (dict(temperature=-1.0), "temperature must be a number >= 0"),
    (dict(top_k=0), "top_k must be an integer >= 1"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
    (dict(max_new_tokens=-2), "max_new_tokens must be an integer >= 0"),
])
def test_bad_sampling_arguments(options, message):
    model = make_model()
    arguments = {"max_new_tokens": 3, **options}
    with pytest.raises(ValueError, match=message):
        model.generate([1, 2], **arguments)
    with pytest.raises(ValueError, match=message):
        model.stream([1, 2], **arguments)  # checked at the call, before the first token


@pytest.mark.parametrize("prompt,error,message", [
    ([], ValueError, "prompt is empty"),
    ([[1, 2], []], ValueError, "prompt is empty"),
    ([1, 99], ValueError, "token id 99"),
    ([1.5, 2.0], TypeError, "integer array"),
])
def test_bad_prompts(prompt, error, message):
    with pytest.raises(error, match=message):
        make_model().generate(prompt, 3)


def test_crop_context_conditions_on_the_last_max_seq_len_tokens():
    model = make_model(positional="learned", dtype="float64").eval()   # max_seq_len 24
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    generated = model.generate(prompts, 40, temperature=0, crop_context=True)
    for prompt, row in zip(prompts, generated):
        # nanoGPT's loop: re-run the model on the last max_seq_len tokens for every new token.
        ids = list(prompt)
        while len(ids) < len(prompt) + 40:
            window = np.array([ids[-24:]])
            ids.append(int(model(window)[0, -1].argmax()))
        assert row == ids

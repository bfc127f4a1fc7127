"""Text generation: incremental decoding with a KV cache, and temperature / top-k / top-p sampling.

`TransformerLM.generate` and `TransformerLM.stream` are the entry points; this module holds the
machinery so that transformer_lm.py stays about the model itself. Every argument is checked once, when
generation is asked for; the per-token loop then trusts them.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Union

import numpy as np

from attention import KVCache
from device import array_module, to_device, to_host
from precision import autocast

if TYPE_CHECKING:  # for the hints only: transformer_lm imports this module
    from transformer_lm import TransformerLM

# What generate and stream accept as prompts: an integer array (B, T) or (T,) (or nested lists of that shape),
# or a list of token-id sequences of different lengths.
Prompts = Union[np.ndarray, Sequence[int], Sequence[Sequence[int]]]
# None (the model's generator), an integer seed, or a Generator to draw from.
Seed = Union[int, np.random.Generator, None]


def left_pad(prompts: Sequence[np.ndarray], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Prompts of different lengths -> ids (B, T) padded on the left, key_padding (B, T) True at pads,
    and positions (B, T) that start at 0 on each row's first real token.

    Left padding keeps every row's last real token in the last column, so one step of decoding
    serves the whole batch; the mask and the positions make each row behave as if it were alone.
    """
    longest = max(len(prompt) for prompt in prompts)
    ids = np.full((len(prompts), longest), pad_id, dtype=np.int64)
    key_padding = np.ones((len(prompts), longest), dtype=bool)
    for row, prompt in enumerate(prompts):
        ids[row, longest - len(prompt):] = prompt
        key_padding[row, longest - len(prompt):] = False
    return ids, key_padding, positions_after_padding(key_padding)


def positions_after_padding(key_padding: np.ndarray) -> np.ndarray:
    """(B, T) positions counting from 0 at each row's first token that is not padding (pads get 0)."""
    return np.maximum(np.cumsum(~key_padding, axis=1) - 1, 0)


class DecodingState:
    """What incremental decoding carries from one step to the next, for a batch of B rows that will
    see at most `capacity` positions in all (a bound: the caches grow with what is actually fed)."""

    def __init__(self, model: TransformerLM, batch_size: int, capacity: int) -> None:
        config, xp = model.config, array_module(model.output_weight)
        self.kv_caches = []
        for pattern in model.attention_patterns():
            # A pattern that never looks back more than `window` keys needs only that many slots, reused in turn.
            window = pattern.window
            rolling = window is not None and window < capacity
            self.kv_caches.append(KVCache(batch_size, config.n_kv_heads, window if rolling else capacity,
                                          config.head_dim, config.numpy_dtype, rolling=rolling, xp=xp))
        self.next_positions = np.zeros((batch_size, 1), dtype=np.int64)


def decode(model: TransformerLM, state: DecodingState, ids: np.ndarray, key_padding: np.ndarray | None = None,
           positions: np.ndarray | None = None) -> np.ndarray:
    """Feed ids (B, T) after what `state` has seen; returns the logits of the last position (B, V).

    The first call (the prompt, "prefill") may carry padding and positions; later calls feed one
    token per row at the next position. The pass runs in evaluation mode (no dropout) and the model's
    mode is restored right after it, so a stream paused between tokens leaves the model as it found it.
    On a GPU the step's ids, positions and padding cross to it, and the logits come back to the host, where
    sampling runs with the same generator as on the CPU.
    """
    if positions is None:
        positions = state.next_positions + np.arange(ids.shape[1])
    state.next_positions = positions[:, -1:] + 1
    ids, positions = to_device(ids, model.device), to_device(positions, model.device)
    if key_padding is not None:
        key_padding = to_device(key_padding, model.device)
    was_training = model.training
    if was_training:
        model.eval()
    try:
        with autocast(model.operand_rounding):  # the model's precision (the last row's projection stays float32)
            last = model.decoder.forward(ids, positions, state.kv_caches, key_padding)[:, -1]    # (B, C)
    finally:
        if was_training:
            model.train()
    if len(last) == 1:
        return to_host(last @ model.output_weight.T)
    # For a few rows, OpenBLAS streams the (V, C) vocabulary matrix faster as (V, C) @ (C, B), transposed
    # back, than as (B, C) @ (C, V): about 25% at B = 8; for one row the usual order is faster.
    return to_host((model.output_weight @ last.T).T)


def greedy_without_cache(model: TransformerLM, ids: np.ndarray, steps: int) -> np.ndarray:
    """Greedy decoding the picoGPT way: the whole sequence goes through the model again for every new
    token. ids (B, T) -> (B, T + steps). The reference the KV cache is tested and timed against."""
    for _ in range(steps):
        ids = np.concatenate([ids, to_host(model(ids)[:, -1].argmax(axis=-1))[:, None]], axis=1)
    return ids


def is_integer(value: object) -> bool:
    """A Python or NumPy integer, not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_real(value: object) -> bool:
    """A Python or NumPy integer or float, not a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def check_sampling_options(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Wrong types raise TypeError, values out of range (NaN and infinity included) ValueError."""
    message = f"temperature must be a number >= 0 (0 means greedy) and finite, got {temperature!r:.80}"
    if not is_real(temperature):
        raise TypeError(message)
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(message)
    if top_k is not None:
        message = f"top_k must be an integer >= 1 or None, got {top_k!r:.80}"
        if not is_integer(top_k):
            raise TypeError(message)
        if top_k < 1:
            raise ValueError(message)
    if top_p is not None:
        message = f"top_p must be in (0, 1] or None, got {top_p!r:.80}"
        if not is_real(top_p):
            raise TypeError(message)
        if not 0.0 < top_p <= 1.0:  # False for NaN
            raise ValueError(message)


def as_max_new_tokens(max_new_tokens: int) -> int:
    """max_new_tokens as a Python int >= 0, or TypeError / ValueError."""
    message = f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r:.80}"
    if not is_integer(max_new_tokens):
        raise TypeError(message)
    if max_new_tokens < 0:
        raise ValueError(message)
    return int(max_new_tokens)  # a Python int: T + max_new_tokens cannot overflow


def as_generator(model: TransformerLM, seed: Seed) -> np.random.Generator:
    """seed None -> the model's own generator; an integer >= 0 -> a fresh Generator seeded with it; a
    np.random.Generator is used as it is."""
    if seed is None:
        return model.rng
    if isinstance(seed, np.random.Generator):
        return seed
    message = f"seed must be None, an integer >= 0 or a np.random.Generator, got {seed!r:.80}"
    if not is_integer(seed):
        raise TypeError(message)
    if seed < 0:
        raise ValueError(message)
    return np.random.default_rng(int(seed))


def as_stop_tokens(model: TransformerLM, stop_tokens: Iterable[int] | None) -> np.ndarray:
    """None or an iterable of token ids (list, set, range, 1-D integer array, iterator) -> int64 array (S,).
    Read here once, so an iterator serves both the stream and the cutting of list results."""
    message = f"stop_tokens must be None or an iterable of token ids such as [0, 7], got {stop_tokens!r:.80}"
    if stop_tokens is None:
        return np.zeros(0, dtype=np.int64)
    if isinstance(stop_tokens, (str, bytes)):
        raise TypeError(message)
    try:
        tokens = list(stop_tokens)
    except TypeError:  # not iterable: an int, a 0-d array
        raise TypeError(message) from None
    for token in tokens:
        if not is_integer(token):
            raise TypeError(f"stop_tokens must hold integer token ids, got {token!r:.80}")
        if not 0 <= token < model.config.vocab_size:
            raise ValueError(f"stop token {token} is out of range [0, {model.config.vocab_size})")
    return np.array(tokens, dtype=np.int64)


def token_array(ids: object, name: str) -> np.ndarray:
    """np.asarray(ids), with ragged nesting ([[1, 2], 3]) and text turned into a clear TypeError."""
    if isinstance(ids, (str, bytes)):
        raise TypeError(f"{name} must be token ids, not text ({ids!r:.40}): encode it with a tokenizer first")
    try:
        return np.asarray(ids)
    except ValueError:
        raise TypeError(f"{name} must be a sequence of token ids or of equal-length sequences, got {ids!r:.80}") \
            from None


def as_prompt_list(model: TransformerLM, ids: Prompts, check_length: bool = True) -> tuple[list[np.ndarray], str]:
    """Accept (B, T) or (T,) integer arrays (or nested lists of that shape), or a list of token-id
    sequences of any lengths. Returns (list of validated 1-D prompts, the input's form: "2d", "1d" or
    "list"). check_length=False allows prompts longer than max_seq_len (they will be cropped)."""
    if isinstance(ids, (list, tuple)) and ids and all(isinstance(prompt, (list, tuple, np.ndarray)) for prompt in ids):
        form = "list"
        prompts = [token_array(prompt, f"prompt {row}") for row, prompt in enumerate(ids)]
        for row, prompt in enumerate(prompts):
            if prompt.ndim != 1:
                raise ValueError(f"prompt {row} must be a flat sequence of token ids, got shape {prompt.shape}")
    else:
        array = token_array(ids, "the prompt")
        if array.ndim not in (1, 2):
            raise ValueError(f"the prompt must be a (T,) or (B, T) array of token ids, or a list of token-id "
                             f"sequences, got {type(ids).__name__} of shape {array.shape}")
        form = "1d" if array.ndim == 1 else "2d"
        prompts = list(array[None] if array.ndim == 1 else array)
    if not prompts or any(len(prompt) == 0 for prompt in prompts):
        raise ValueError("the prompt is empty: give at least one token id per sequence")
    for row, prompt in enumerate(prompts):
        model.check_ids(prompt[None], name=f"prompt {row}", check_length=check_length)
    return prompts, form


def next_token_probabilities(logits: np.ndarray, temperature: float, top_k: int | None = None,
                             top_p: float | None = None) -> np.ndarray:
    """Finite logits (B, V) -> sampling distribution (B, V) after temperature (> 0), top-k and top-p (nucleus)."""
    # Shifting by the row maximum before dividing keeps every temperature finite: the largest scaled logit
    # is exactly 0 and the others are <= 0 (logits / 1e-39 would be inf - inf = NaN). Below the smallest
    # normal float32 (or above its largest) the temperature itself is not representable: divide in float64.
    scaled = logits - logits.max(axis=-1, keepdims=True)                # (B, V), ours to overwrite
    limits = np.finfo(scaled.dtype)
    if not float(limits.tiny) <= temperature <= float(limits.max):
        scaled = scaled.astype(np.float64)
    with np.errstate(over="ignore"):  # overflow to -inf is the intended limit: probability 0
        scaled /= temperature
    if top_k is not None and top_k < scaled.shape[-1]:
        kth_largest = np.partition(scaled, -top_k, axis=-1)[:, -top_k, None]
        scaled = np.where(scaled < kth_largest, -np.inf, scaled)
    probabilities = np.exp(scaled, out=scaled)                           # the maximum is exp(0) = 1: no 0 / 0
    probabilities /= probabilities.sum(axis=-1, keepdims=True)
    if top_p is not None and top_p < 1.0:
        # Keep the smallest set of most likely tokens whose mass reaches top_p: a token stays when
        # the mass of the tokens ranked before it is still below top_p.
        order = np.argsort(-probabilities, axis=-1, kind="stable")
        ranked = np.take_along_axis(probabilities, order, axis=-1)
        keep_ranked = np.cumsum(ranked, axis=-1) - ranked < top_p
        keep = np.zeros_like(keep_ranked)
        np.put_along_axis(keep, order, keep_ranked, axis=-1)
        probabilities = np.where(keep, probabilities, 0.0)
        probabilities /= probabilities.sum(axis=-1, keepdims=True)
    return probabilities


def sample_next(logits: np.ndarray, temperature: float, top_k: int | None, top_p: float | None,
                rng: np.random.Generator, step: int | None = None) -> np.ndarray:
    """One token id per row (B,): the argmax when temperature is 0, else a draw from the distribution.
    NaN or infinite logits (a model with non-finite weights) raise a ValueError that names `step`."""
    if not np.isfinite(logits).all():
        rows = np.flatnonzero(~np.isfinite(logits).all(axis=-1)).tolist()
        where = "" if step is None else f" at generation step {step} (0 is the first new token)"
        raise ValueError(f"the logits{where} contain NaN or infinity in rows {rows}, so no token can be chosen; "
                         "are the model's weights finite?")
    if temperature == 0.0:
        return logits.argmax(axis=-1)
    probabilities = next_token_probabilities(logits, temperature, top_k, top_p)
    cumulative = np.cumsum(probabilities, axis=-1)
    draws = rng.random((len(logits), 1)) * cumulative[:, -1:]
    # The first index whose cumulative mass exceeds the draw; zero-probability tokens never qualify.
    return np.minimum((cumulative <= draws).sum(axis=-1), logits.shape[-1] - 1)


def start_stream(model: TransformerLM, prompts: list[np.ndarray], max_new_tokens: int, temperature: float,
                 top_k: int | None, top_p: float | None, stop_tokens: np.ndarray, seed: Seed,
                 crop_context: bool) -> Iterator[np.ndarray]:
    """Check the remaining arguments of validated prompts and stop tokens; return the token iterator."""
    max_new_tokens = as_max_new_tokens(max_new_tokens)
    check_sampling_options(temperature, top_k, top_p)
    rng = as_generator(model, seed)
    # The last new token is returned, never fed back, so the model sees longest + max_new_tokens - 1 positions.
    position_limit = model.config.max_seq_len if model.config.positional == "learned" else None
    longest = max(len(prompt) for prompt in prompts)
    if position_limit and not crop_context and longest + max_new_tokens - 1 > position_limit:
        raise ValueError(f"prompt length {longest} + max_new_tokens {max_new_tokens} needs "
                         f"{longest + max_new_tokens - 1} positions, more than max_seq_len {position_limit} "
                         "(learned positions have no embedding beyond it; crop_context=True conditions on "
                         "the last max_seq_len tokens instead)")
    crop_at = position_limit if crop_context else None
    if crop_at:
        prompts = [prompt[-crop_at:] for prompt in prompts]
    return stream_tokens(model, prompts, max_new_tokens, float(temperature), top_k, top_p, stop_tokens, rng, crop_at)


def stream(model: TransformerLM, ids: Prompts, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, stop_tokens: Iterable[int] | None = None, seed: Seed = None,
           crop_context: bool = False) -> Iterator[np.ndarray]:
    """An iterator over the next token of every row, (B,) int64, yielded as each is produced. A row that
    has produced one of `stop_tokens` repeats it until all rows have stopped or max_new_tokens is reached.
    Arguments are checked here, before the first token is asked for. Between tokens (and once the
    iterator is left) the model is in the mode it was in; each step is computed in evaluation mode.

    crop_context: with learned positions, a sequence that outgrows max_seq_len is an error unless this is
    True; then each new token is predicted from the last max_seq_len tokens (a longer prompt included),
    re-encoded at positions 0..max_seq_len-1 (nanoGPT's policy: the cache cannot be reused once positions
    shift, so every step past the limit costs a forward pass over max_seq_len tokens)."""
    prompts, _ = as_prompt_list(model, ids, check_length=not crop_context)
    return start_stream(model, prompts, max_new_tokens, temperature, top_k, top_p, as_stop_tokens(model, stop_tokens),
                        seed, crop_context)


def stream_tokens(model: TransformerLM, prompts: list[np.ndarray], max_new_tokens: int, temperature: float,
                  top_k: int | None, top_p: float | None, stop_tokens: np.ndarray, rng: np.random.Generator,
                  crop_at: int | None = None) -> Iterator[np.ndarray]:
    """The generator behind `stream`; crop_at: re-encode the last crop_at tokens once positions reach it.
    Its cost follows the tokens produced: the KV caches grow as they fill, and only crop_context keeps
    the recent tokens (at most crop_at of them)."""
    if max_new_tokens == 0:
        return
    ids, padding, positions = left_pad(prompts)
    batch_size = len(prompts)
    capacity = ids.shape[1] + max_new_tokens if crop_at is None else min(ids.shape[1] + max_new_tokens, crop_at)
    state = DecodingState(model, batch_size, capacity)
    logits = decode(model, state, ids, padding, positions)
    finished = np.zeros(batch_size, dtype=bool)
    last = np.zeros(batch_size, dtype=np.int64)
    for step in range(max_new_tokens):
        token = np.where(finished, last, sample_next(logits, temperature, top_k, top_p, rng, step))
        yield token
        finished |= np.isin(token, stop_tokens)
        last = token
        if finished.all() or step == max_new_tokens - 1:
            break
        if crop_at is None:
            logits = decode(model, state, token[:, None])
            continue
        ids = np.concatenate([ids, token[:, None]], axis=1)[:, -crop_at:]
        padding = np.concatenate([padding, np.zeros((batch_size, 1), dtype=bool)], axis=1)[:, -crop_at:]
        if state.next_positions.max() >= crop_at:
            state = DecodingState(model, batch_size, crop_at)
            logits = decode(model, state, ids, padding, positions_after_padding(padding))
        else:
            logits = decode(model, state, token[:, None])


def generate(model: TransformerLM, ids: Prompts, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, stop_tokens: Iterable[int] | None = None,
             seed: Seed = None, crop_context: bool = False) -> np.ndarray | list[list[int]]:
    """The prompt followed by the generated tokens, in the input's form: (B, T) array -> (B, T + n)
    array, (T,) -> (T + n,), a list of sequences -> a list of lists, each cut after its stop token.
    With crop_context the whole prompt is returned, though only its last max_seq_len tokens condition."""
    prompts, form = as_prompt_list(model, ids, check_length=not crop_context)
    stop_tokens = as_stop_tokens(model, stop_tokens)
    steps = list(start_stream(model, prompts, max_new_tokens, temperature, top_k, top_p, stop_tokens, seed,
                              crop_context))
    new_tokens = np.stack(steps, axis=1) if steps else np.zeros((len(prompts), 0), dtype=np.int64)
    if form == "list":
        results = []
        for prompt, row in zip(prompts, new_tokens):
            stops = np.flatnonzero(np.isin(row, stop_tokens))
            results.append(prompt.tolist() + row[: stops[0] + 1 if len(stops) else len(row)].tolist())
        return results
    full = np.concatenate([np.stack(prompts), new_tokens], axis=1)
    return full[0] if form == "1d" else full

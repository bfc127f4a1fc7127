"""Text generation: incremental decoding with a KV cache, and temperature / top-k / top-p sampling.

`TransformerLM.generate` and `TransformerLM.stream` are the entry points; this module holds the
machinery so that transformer_lm.py stays about the model itself.
"""
import numpy as np

from attention import KVCache


def left_pad(prompts, pad_id=0):
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


def positions_after_padding(key_padding):
    """(B, T) positions counting from 0 at each row's first token that is not padding (pads get 0)."""
    return np.maximum(np.cumsum(~key_padding, axis=1) - 1, 0)


class DecodingState:
    """What incremental decoding carries from one step to the next, for a batch of B rows that will
    see `capacity` positions in all."""

    def __init__(self, model, batch_size, capacity):
        config = model.config
        head_dim = config.d_model // config.n_heads
        self.kv_caches = []
        for block in model.decoder.blocks:
            # A pattern that never looks back more than `window` keys needs only that many slots, reused in turn.
            window = block.attention.pattern.window
            rolling = window is not None and window < capacity
            self.kv_caches.append(KVCache(batch_size, config.n_heads, window if rolling else capacity, head_dim,
                                          config.numpy_dtype, rolling=rolling))
        self.next_positions = np.zeros((batch_size, 1), dtype=np.int64)


def decode(model, state, ids, key_padding=None, positions=None):
    """Feed ids (B, T) after what `state` has seen; returns the logits of the last position (B, V).

    The first call (the prompt, "prefill") may carry padding and positions; later calls feed one
    token per row at the next position.
    """
    if positions is None:
        positions = state.next_positions + np.arange(ids.shape[1])
    state.next_positions = positions[:, -1:] + 1
    last = model.decoder.forward(ids, positions, state.kv_caches, key_padding)[:, -1]    # (B, C)
    if len(last) == 1:
        return last @ model.output_weight.T
    # For a few rows, OpenBLAS streams the (V, C) vocabulary matrix faster as (V, C) @ (C, B), transposed
    # back, than as (B, C) @ (C, V): about 25% at B = 8; for one row the usual order is faster.
    return (model.output_weight @ last.T).T


def greedy_without_cache(model, ids, steps):
    """Greedy decoding the picoGPT way: the whole sequence goes through the model again for every new
    token. ids (B, T) -> (B, T + steps). The reference the KV cache is tested and timed against."""
    for _ in range(steps):
        ids = np.concatenate([ids, model(ids)[:, -1].argmax(axis=-1)[:, None]], axis=1)
    return ids


def check_sampling_options(temperature, top_k, top_p):
    if not (isinstance(temperature, (int, float)) and temperature >= 0.0):
        raise ValueError(f"temperature must be a number >= 0 (0 means greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise ValueError(f"top_k must be an integer >= 1 or None, got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p!r}")


def next_token_probabilities(logits, temperature, top_k=None, top_p=None):
    """logits (B, V) -> sampling distribution (B, V) after temperature, top-k and top-p (nucleus)."""
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth_largest = np.partition(logits, -top_k, axis=-1)[:, -top_k, None]
        logits = np.where(logits < kth_largest, -np.inf, logits)
    probabilities = np.exp(logits - logits.max(axis=-1, keepdims=True))
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


def sample_next(logits, temperature, top_k, top_p, rng):
    """One token id per row (B,): the argmax when temperature is 0, else a draw from the distribution."""
    if temperature == 0.0:
        return logits.argmax(axis=-1)
    probabilities = next_token_probabilities(logits, temperature, top_k, top_p)
    cumulative = np.cumsum(probabilities, axis=-1)
    draws = rng.random((len(logits), 1)) * cumulative[:, -1:]
    # The first index whose cumulative mass exceeds the draw; zero-probability tokens never qualify.
    return np.minimum((cumulative <= draws).sum(axis=-1), logits.shape[-1] - 1)


def as_prompt_list(model, ids):
    """Accept (B, T) or (T,) arrays, or a list of token-id sequences of any lengths.
    Returns (list of validated 1-D prompts, the input's form: "2d", "1d" or "list")."""
    if isinstance(ids, (list, tuple)) and ids and all(np.ndim(prompt) == 1 for prompt in ids):
        form = "list"
        prompts = [np.asarray(prompt) for prompt in ids]
    else:
        array = np.asarray(ids)
        form = "1d" if array.ndim == 1 else "2d"
        prompts = list(array[None] if array.ndim == 1 else array)
    if not prompts or any(len(prompt) == 0 for prompt in prompts):
        raise ValueError("the prompt is empty: give at least one token id per sequence")
    for row, prompt in enumerate(prompts):
        model.check_ids(prompt[None], name=f"prompt {row} ")
    return prompts, form


def stream(model, ids, max_new_tokens, temperature=1.0, top_k=None, top_p=None, stop_tokens=None, seed=None,
           crop_context=False):
    """An iterator over the next token of every row, (B,) int64, yielded as each is produced. A row that
    has produced one of `stop_tokens` repeats it until all rows have stopped or max_new_tokens is reached.
    Arguments are checked here, before the first token is asked for.

    crop_context: with learned positions, a sequence that outgrows max_seq_len is an error unless this is
    True; then each new token is predicted from the last max_seq_len tokens, re-encoded at positions
    0..max_seq_len-1 (nanoGPT's policy: the cache cannot be reused once positions shift, so every step
    past the limit costs a forward pass over max_seq_len tokens)."""
    prompts, _ = as_prompt_list(model, ids)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    check_sampling_options(temperature, top_k, top_p)
    longest = max(len(prompt) for prompt in prompts)
    # The last new token is returned, never fed back, so the model sees longest + max_new_tokens - 1 positions.
    position_limit = model.config.max_seq_len if model.config.positional == "learned" else None
    if position_limit and longest + max_new_tokens - 1 > position_limit and not crop_context:
        raise ValueError(f"prompt length {longest} + max_new_tokens {max_new_tokens} needs "
                         f"{longest + max_new_tokens - 1} positions, more than max_seq_len {position_limit} "
                         "(learned positions have no embedding beyond it; crop_context=True conditions on "
                         "the last max_seq_len tokens instead)")
    stop_tokens = np.asarray([] if stop_tokens is None else list(stop_tokens), dtype=np.int64)
    rng = model.rng if seed is None else np.random.default_rng(seed)
    return stream_tokens(model, prompts, max_new_tokens, temperature, top_k, top_p, stop_tokens, rng,
                         position_limit if crop_context else None)


def stream_tokens(model, prompts, max_new_tokens, temperature, top_k, top_p, stop_tokens, rng, crop_at=None):
    """The generator behind `stream`; crop_at: re-encode the last crop_at tokens once positions reach it."""
    sequence, padding, positions = left_pad(prompts)
    was_training = model.training
    model.eval()
    try:
        state = DecodingState(model, len(prompts), min(sequence.shape[1] + max_new_tokens, crop_at or np.inf))
        logits = decode(model, state, sequence, padding, positions)
        finished = np.zeros(len(prompts), dtype=bool)
        last = np.zeros(len(prompts), dtype=np.int64)
        for step in range(max_new_tokens):
            token = np.where(finished, last, sample_next(logits, temperature, top_k, top_p, rng))
            yield token
            finished |= np.isin(token, stop_tokens)
            last = token
            if finished.all() or step == max_new_tokens - 1:
                break
            sequence = np.concatenate([sequence, token[:, None]], axis=1)
            padding = np.concatenate([padding, np.zeros((len(prompts), 1), dtype=bool)], axis=1)
            if crop_at and state.next_positions.max() >= crop_at:
                state = DecodingState(model, len(prompts), crop_at)
                window_padding = padding[:, -crop_at:]
                logits = decode(model, state, sequence[:, -crop_at:], window_padding,
                                positions_after_padding(window_padding))
            else:
                logits = decode(model, state, token[:, None])
    finally:
        model.train(was_training)


def generate(model, ids, max_new_tokens, **options):
    """The prompt followed by the generated tokens, in the input's form: (B, T) array -> (B, T + n)
    array, (T,) -> (T + n,), a list of sequences -> a list of lists, each cut after its stop token."""
    prompts, form = as_prompt_list(model, ids)
    steps = list(stream(model, ids, max_new_tokens, **options))
    new_tokens = np.stack(steps, axis=1) if steps else np.zeros((len(prompts), 0), dtype=np.int64)
    if form == "list":
        stop_tokens = set(options.get("stop_tokens") or ())
        results = []
        for prompt, row in zip(prompts, new_tokens):
            stops = [index for index, token in enumerate(row) if token in stop_tokens]
            results.append(prompt.tolist() + row[: stops[0] + 1 if stops else len(row)].tolist())
        return results
    full = np.concatenate([np.stack(prompts), new_tokens], axis=1)
    return full[0] if form == "1d" else full

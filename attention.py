"""Multi-head causal self-attention, batched over heads (no Python loop over heads or positions)."""
import math

import numpy as np

from module import Dropout, Module, linear_backward, linear_forward

# Blocked scores get a large negative finite value instead of -inf: exp() still turns them into exact
# zeros, but a query whose keys are all blocked (a left-padding position) gets a uniform row instead
# of 0/0 = NaN, which would otherwise leak into later layers through 0 * NaN.
MASKED_SCORE = -1e30


def causal_mask(num_queries, num_keys):
    """(Tq, Tk) boolean, True where query i may NOT look at key j.

    The queries are the last Tq of the Tk positions (Tq == Tk in a plain forward pass), so query i
    sits at position Tk - Tq + i and sees the keys j <= Tk - Tq + i.
    """
    return np.triu(np.ones((num_queries, num_keys), dtype=bool), k=num_keys - num_queries + 1)


def softmax(scores):
    """Numerically stable softmax over the last axis: subtracting the row maximum keeps exp() <= 1.
    Entries at -inf (masked) come out exactly 0."""
    exps = np.exp(scores - scores.max(axis=-1, keepdims=True))
    exps /= exps.sum(axis=-1, keepdims=True)
    return exps


def softmax_backward(dprobs, probs):
    # Jacobian-vector product of softmax: ds_j = p_j (dp_j - sum_k dp_k p_k).
    return probs * (dprobs - np.sum(dprobs * probs, axis=-1, keepdims=True))


class CausalSelfAttention(Module):
    """x: (B, T, C) -> (B, T, C), with n_heads heads of head_dim = C / n_heads.

    Parameters: W_qkv (C, 3C) and b_qkv (3C,), the fused query/key/value projection, whose output
    columns are [queries | keys | values], each split into heads of head_dim columns;
    W_out (C, C) and b_out (C,), the output projection.
    """

    def __init__(self, d_model, n_heads, dropout, rng, dtype):
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.add_parameter("W_qkv", np.zeros((d_model, 3 * d_model), dtype=dtype))
        self.add_parameter("b_qkv", np.zeros(3 * d_model, dtype=dtype))
        self.add_parameter("W_out", np.zeros((d_model, d_model), dtype=dtype))
        self.add_parameter("b_out", np.zeros(d_model, dtype=dtype))
        self.attention_dropout = Dropout(dropout, rng)
        self.residual_dropout = Dropout(dropout, rng)
        self.cache = None

    def split_heads(self, qkv):
        """(B, T, 3C) -> queries, keys, values, each (B, H, T, D)."""
        B, T, _ = qkv.shape
        heads = qkv.reshape(B, T, 3, self.n_heads, self.head_dim).transpose(2, 0, 3, 1, 4)
        return heads[0], heads[1], heads[2]

    def forward(self, x, kv_cache=None, key_padding=None):
        """x: (B, T, C) -> (B, T, C).

        kv_cache: a KVCache holding the keys and values of earlier positions (incremental decoding);
            the T new positions follow them. key_padding: (B, Tk) bool, True at padded key positions
            (left-padded prompts), which no query may attend to. Both are for inference only.
        """
        B, T, C = x.shape
        p = self.params
        qkv = linear_forward(x, p["W_qkv"], p["b_qkv"])                  # (B, T, 3C)
        queries, keys, values = self.split_heads(qkv)                     # (B, H, T, D) each
        if kv_cache is not None:
            keys, values = kv_cache.append(keys, values)                  # (B, H, Tk, D), Tk >= T
        # Scaling the queries (T x D numbers) is cheaper than scaling the scores (T x Tk).
        scaled_queries = queries * (1.0 / math.sqrt(self.head_dim))
        scores = scaled_queries @ keys.transpose(0, 1, 3, 2)             # (B, H, T, Tk)
        blocked = causal_mask(T, keys.shape[2])
        if key_padding is not None:
            blocked = blocked | key_padding[:, None, None, :]             # (B, 1, T, Tk)
        np.copyto(scores, MASKED_SCORE, where=blocked)
        weights = softmax(scores)                                         # rows sum to 1
        dropped_weights = self.attention_dropout.forward(weights)
        heads_out = dropped_weights @ values                              # (B, H, T, D)
        merged = heads_out.transpose(0, 2, 1, 3).reshape(B, T, C)        # heads side by side
        out = linear_forward(merged, p["W_out"], p["b_out"])
        self.cache = (x, scaled_queries, keys, values, weights, dropped_weights, merged)
        return self.residual_dropout.forward(out)

    def backward(self, dout):
        x, scaled_queries, keys, values, weights, dropped_weights, merged = self.cache
        B, T, C = x.shape
        p, g = self.params, self.grads
        dout = self.residual_dropout.backward(dout)
        dmerged = linear_backward(dout, merged, p["W_out"], g["W_out"], g["b_out"])
        dheads_out = dmerged.reshape(B, T, self.n_heads, self.head_dim).transpose(0, 2, 1, 3)
        dvalues = dropped_weights.transpose(0, 1, 3, 2) @ dheads_out     # (B, H, T, D)
        dweights = self.attention_dropout.backward(dheads_out @ values.transpose(0, 1, 3, 2))
        dscores = softmax_backward(dweights, weights)                     # masked entries stay 0
        dqueries = (dscores @ keys) * (1.0 / math.sqrt(self.head_dim))
        dkeys = dscores.transpose(0, 1, 3, 2) @ scaled_queries
        # Stack back into the fused layout (B, T, 3, H, D) -> (B, T, 3C), the inverse of split_heads.
        dqkv = np.stack([dqueries, dkeys, dvalues]).transpose(1, 3, 0, 2, 4).reshape(B, T, 3 * C)
        return linear_backward(dqkv, x, p["W_qkv"], g["W_qkv"], g["b_qkv"])


class KVCache:
    """The keys and values one attention layer has computed so far, so that a new token attends to
    the past without recomputing it: O(T * C) work per token instead of a whole forward pass.

    Buffers (B, H, capacity, D) are allocated once; `length` positions are filled.
    """

    def __init__(self, batch_size, n_heads, capacity, head_dim, dtype):
        self.keys = np.zeros((batch_size, n_heads, capacity, head_dim), dtype=dtype)
        self.values = np.zeros_like(self.keys)
        self.length = 0

    def append(self, keys, values):
        """Store keys, values (B, H, T, D) after the filled part; return all filled (B, H, length, D)."""
        end = self.length + keys.shape[2]
        if end > self.keys.shape[2]:
            raise ValueError(f"KV cache is full: {end} positions requested, capacity {self.keys.shape[2]}")
        self.keys[:, :, self.length:end] = keys
        self.values[:, :, self.length:end] = values
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

"""TransformerLM: the Decoder plus an output projection to vocabulary logits, with loss and backward.

    from transformer_lm import TransformerLM, TransformerConfig
    model = TransformerLM(TransformerConfig(vocab_size=65, d_model=128, n_heads=4, n_layers=4), seed=0)
    logits = model(ids)                   # (B, T) int -> (B, T, vocab_size)
    loss = model.loss(ids, targets)       # mean cross-entropy; targets == -100 are skipped
    grads = model.backward()              # name -> gradient, same keys as model.parameters()
"""
import dataclasses
import math

import numpy as np

import generation
from decoder import Decoder
from module import Module
from sparse_attention import adaptive_spans

IGNORE_INDEX = -100

CHOICES = {
    "positional": ("sinusoidal", "learned"),
    "activation": ("gelu_tanh", "gelu"),
    "init": ("xavier", "gpt2"),
    "dtype": ("float32", "float64"),
    "attention": ("full", "sliding", "strided", "fixed"),
}
# The pattern fields each attention pattern needs; every other pattern must leave them None.
PATTERN_FIELDS = {"full": (), "sliding": ("window",), "strided": ("stride",), "fixed": ("stride", "summary")}


@dataclasses.dataclass
class TransformerConfig:
    """Every shape and option of the model. Validated on construction.

    positional: "sinusoidal" (fixed, Vaswani et al.) or "learned" (GPT-2).
    norm_first: False = post-LN, LayerNorm(x + sublayer(x)); True = pre-LN, x + sublayer(LayerNorm(x)).
    tie_weights: the output projection reuses the token embedding matrix.
    activation: "gelu_tanh" (GPT-2's approximation) or "gelu" (exact, through erf).
    init: "xavier" (Glorot uniform for every matrix) or "gpt2" (normal(0, 0.02), residual
          projections scaled by 1/sqrt(2 * n_layers)); see TransformerLM.initialize.
    attention: which keys query i sees (sparse_attention.py); every pattern is causal.
        "full"     all j <= i.
        "sliding"  the `window` most recent, i - window < j <= i (window counts the query itself).
        "strided"  Child et al. 2019: the first half of the heads i - stride < j <= i, the second half
                   every stride-th key back, (i - j) % stride == 0. n_heads must be even.
        "fixed"    Child et al. 2019: the first half of the heads their own block of `stride` positions,
                   the second half the last `summary` positions of every block (and their own).
        Sequences need not be a multiple of window or stride.
    adaptive_span: each head learns how far back it looks, up to max_span tokens (Sukhbaatar et al.
        2019; attention must be "full"), through a soft mask with a ramp of span_ramp tokens. In training
        mode TransformerLM.loss adds span_loss_coefficient * (the mean span in tokens) for every layer.
    """
    vocab_size: int = 256
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    d_ff: int = None  # None -> 4 * d_model
    max_seq_len: int = 128
    dropout: float = 0.1
    positional: str = "sinusoidal"
    norm_first: bool = False
    tie_weights: bool = True
    activation: str = "gelu_tanh"
    layer_norm_eps: float = 1e-5
    init: str = "xavier"
    dtype: str = "float32"
    attention: str = "full"
    window: int = None
    stride: int = None
    summary: int = None
    adaptive_span: bool = False
    max_span: int = None
    span_ramp: int = 32
    span_loss_coefficient: float = 2e-6

    def __post_init__(self):
        # NumPy scalars (vocab_size=tokens.max() + 1) become Python ones, so the config compares, prints and
        # serializes to JSON like one written by hand.
        for field in dataclasses.fields(self):
            setattr(self, field.name, python_scalar(getattr(self, field.name)))
        if self.d_ff is None and is_positive_integer(self.d_model):
            self.d_ff = 4 * self.d_model
        for name in ("vocab_size", "d_model", "n_heads", "n_layers", "d_ff", "max_seq_len", "span_ramp"):
            if not is_positive_integer(getattr(self, name)):
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        for name in ("dropout", "layer_norm_eps", "span_loss_coefficient"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {value!r}")
            setattr(self, name, float(value))
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not 0.0 < self.layer_norm_eps < math.inf:
            raise ValueError(f"layer_norm_eps must be positive and finite, got {self.layer_norm_eps!r}")
        if not 0.0 <= self.span_loss_coefficient < math.inf:
            raise ValueError(f"span_loss_coefficient must be a finite number >= 0, got {self.span_loss_coefficient!r}")
        for name, allowed in CHOICES.items():
            if not isinstance(getattr(self, name), str) or getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("norm_first", "tie_weights", "adaptive_span"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        self.check_attention_fields()

    def check_attention_fields(self):
        """The pattern fields: set exactly for the pattern that uses them, and consistent with it."""
        for name in ("window", "stride", "summary"):
            value = getattr(self, name)
            if name not in PATTERN_FIELDS[self.attention]:
                if value is not None:
                    users = [pattern for pattern, fields in PATTERN_FIELDS.items() if name in fields]
                    raise ValueError(f"{name} is only used with attention in {users}; got {name}={value!r} "
                                     f"with attention={self.attention!r}")
            elif not is_positive_integer(value):
                raise ValueError(f"{name} must be a positive integer for attention={self.attention!r}, got {value!r}")
        if self.attention in ("strided", "fixed") and self.n_heads % 2:
            raise ValueError(f"n_heads must be even for attention={self.attention!r} (half the heads follow each "
                             f"of its two patterns), got {self.n_heads}")
        if self.attention == "fixed" and self.summary > self.stride:
            raise ValueError(f"summary must be at most stride (the last summary positions of each block of "
                             f"stride), got summary={self.summary} > stride={self.stride}")
        if not self.adaptive_span:
            if self.max_span is not None:
                raise ValueError(f"max_span is only used with adaptive_span=True, got max_span={self.max_span!r}")
            return
        if self.attention != "full":
            raise ValueError(f"adaptive_span needs attention='full' (the span is its own window), "
                             f"got attention={self.attention!r}")
        if not is_positive_integer(self.max_span):
            raise ValueError(f"max_span must be a positive integer with adaptive_span=True, got {self.max_span!r}")
        if self.positional == "learned" and self.max_span > self.max_seq_len:
            raise ValueError(f"max_span ({self.max_span}) must not exceed max_seq_len ({self.max_seq_len}) with "
                             "learned positions: no sequence is longer")

    @property
    def numpy_dtype(self):
        return np.dtype(self.dtype)

    def parameter_shapes(self):
        """name -> shape of every parameter TransformerLM(self) holds, in the order of its parameters(),
        computed without allocating anything (to check a file's tensors before building the model).
        Every parameter has dtype self.numpy_dtype. C = d_model."""
        C = self.d_model
        shapes = {} if self.tie_weights else {"lm_head.weight": (self.vocab_size, C)}
        shapes["decoder.token_embedding.weight"] = (self.vocab_size, C)
        if self.positional == "learned":
            shapes["decoder.position_embedding.weight"] = (self.max_seq_len, C)
        for layer in range(self.n_layers):
            block = f"decoder.blocks.{layer}."
            shapes.update({block + "attention.W_qkv": (C, 3 * C), block + "attention.b_qkv": (3 * C,),
                           block + "attention.W_out": (C, C), block + "attention.b_out": (C,)})
            if self.adaptive_span:
                shapes[block + "attention.pattern.span"] = (self.n_heads,)
            shapes.update({block + "norm1.weight": (C,), block + "norm1.bias": (C,),
                           block + "feed_forward.W_in": (C, self.d_ff), block + "feed_forward.b_in": (self.d_ff,),
                           block + "feed_forward.W_out": (self.d_ff, C), block + "feed_forward.b_out": (C,),
                           block + "norm2.weight": (C,), block + "norm2.bias": (C,)})
        if self.norm_first:
            shapes.update({"decoder.final_norm.weight": (C,), "decoder.final_norm.bias": (C,)})
        return shapes

    @classmethod
    def from_preset(cls, name, **overrides):
        """A named shape (see PRESETS) with any field overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


def python_scalar(value):
    """A NumPy scalar as the Python bool, int, float or str it stands for; anything else unchanged."""
    if isinstance(value, (np.bool_, np.integer, np.floating, np.str_)):
        return value.item()
    return value


def is_positive_integer(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


GPT2_STYLE = dict(positional="learned", norm_first=True, tie_weights=True, activation="gelu_tanh",
                  init="gpt2")
PRESETS = {
    # The seed's demo: small enough to run in a blink.
    "demo": dict(vocab_size=1000, d_model=64, n_heads=4, n_layers=2, max_seq_len=128),
    # nanoGPT's CPU quick start for character-level Shakespeare (0.8M parameters).
    "nanogpt-cpu": dict(vocab_size=65, d_model=128, n_heads=4, n_layers=4, max_seq_len=64, dropout=0.0,
                        **GPT2_STYLE),
    # GPT-2 small (124M parameters).
    "gpt2": dict(vocab_size=50257, d_model=768, n_heads=12, n_layers=12, max_seq_len=1024, dropout=0.1,
                 **GPT2_STYLE),
}


class TransformerLM(Module):
    """ids (B, T) -> logits (B, T, vocab_size). All randomness (initialization and dropout masks)
    comes from `self.rng`, a Generator seeded by `seed`."""

    def __init__(self, config, seed=0):
        super().__init__()
        if not isinstance(config, TransformerConfig):
            raise TypeError(f"config must be a TransformerConfig, got {type(config).__name__}")
        self.config = config
        self.rng = np.random.default_rng(seed)
        self.decoder = Decoder(config, self.rng)
        if not config.tie_weights:
            self.add_parameter("lm_head.weight", np.zeros((config.vocab_size, config.d_model),
                                                          dtype=config.numpy_dtype))
        self.initialize()
        self.tokenizer = None        # set by from_pretrained when the directory holds tokenizer files
        self.hidden = None           # decoder output cached for the head's backward
        # What backward() needs from loss(), with the decoder pass it made: any later pass through the
        # decoder (forward, generate, stream, a picture) overwrites the layer caches, and backward() refuses.
        self.loss_cache = None

    def initialize(self):
        """Fill every matrix (ndim 2, embeddings included) from self.rng; vectors keep their start
        (biases 0, LayerNorm gains 1).

        xavier: uniform(-a, a), a = sqrt(6 / (rows + columns)) (Glorot & Bengio 2010), with rows and
                columns of the matrix as stored: weights (in, out), embeddings (vocab or positions, C).
        gpt2:   normal(0, 0.02); the two projections that write into the residual stream (attention
                and feed-forward W_out) get 0.02 / sqrt(2 * n_layers), as in GPT-2 and nanoGPT.
        """
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layers)
        for name, value in self.parameters().items():
            if value.ndim != 2:
                continue
            if self.config.init == "xavier":
                bound = math.sqrt(6.0 / sum(value.shape))
                value[...] = self.rng.uniform(-bound, bound, value.shape)
            else:
                std = residual_std if name.endswith("W_out") else 0.02
                value[...] = self.rng.normal(0.0, std, value.shape)

    @property
    def output_weight(self):
        """(vocab_size, C): the token embedding when tied, else the separate lm_head."""
        if self.config.tie_weights:
            return self.decoder.token_embedding.params["weight"]
        return self.params["lm_head.weight"]

    @property
    def output_grad(self):
        if self.config.tie_weights:
            return self.decoder.token_embedding.grads["weight"]
        return self.grads["lm_head.weight"]

    def num_parameters(self):
        return sum(value.size for value in self.parameters().values())

    def check_ids(self, ids, name="ids", check_length=True):
        """Validate token ids at the public boundary: an integer array (B, T), each in [0, vocab_size), and
        (check_length) no longer than max_seq_len with learned positions."""
        ids = np.asarray(ids)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"{name} must be an integer array of token ids, got dtype {ids.dtype}")
        if ids.ndim != 2:
            raise ValueError(f"{name} must have shape (batch, seq_len), got shape {ids.shape}")
        if ids.size == 0:
            raise ValueError(f"{name} is empty (shape {ids.shape}); need at least one token per sequence")
        out_of_range = (ids < 0) | (ids >= self.config.vocab_size)
        if out_of_range.any():
            position = tuple(int(i) for i in np.argwhere(out_of_range)[0])
            raise ValueError(f"token id {ids[position]} at {name}{list(position)} is out of range "
                             f"[0, {self.config.vocab_size})")
        if check_length and self.config.positional == "learned" and ids.shape[1] > self.config.max_seq_len:
            raise ValueError(f"sequence length {ids.shape[1]} exceeds max_seq_len {self.config.max_seq_len} "
                             "(learned positions have no embedding beyond it)")
        return ids

    def forward(self, ids):
        """ids: (B, T) integers in [0, vocab_size) -> logits (B, T, vocab_size)."""
        return self.logits(self.check_ids(ids))

    __call__ = forward

    def logits(self, ids):
        self.hidden = self.decoder.forward(ids)                      # (B, T, C)
        return self.hidden @ self.output_weight.T                      # (B, T, V)

    def loss(self, ids, targets, ignore_index=IGNORE_INDEX):
        """Mean cross-entropy of next-token targets (B, T) over the positions not equal to ignore_index.

        With adaptive_span, in training mode, plus the L1 penalty on the spans: span_loss_coefficient *
        (mean span in tokens) summed over layers (backward() includes its gradient). Evaluation mode
        leaves it out, so validation losses stay plain cross-entropies.
        """
        ids = self.check_ids(ids)
        targets = np.asarray(targets)
        if targets.dtype.kind not in "iu":
            raise TypeError(f"targets must be an integer array, got dtype {targets.dtype}")
        if targets.shape != ids.shape:
            raise ValueError(f"targets shape {targets.shape} must match ids shape {ids.shape}")
        valid = targets != ignore_index
        if not valid.any():
            raise ValueError(f"every target equals ignore_index ({ignore_index}); nothing to learn from")
        bad = valid & ((targets < 0) | (targets >= self.config.vocab_size))
        if bad.any():
            position = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"target {targets[position]} at targets{list(position)} is out of range "
                             f"[0, {self.config.vocab_size}) and is not ignore_index ({ignore_index})")

        logits = self.logits(ids).reshape(-1, self.config.vocab_size)   # (B*T, V), ours to overwrite
        rows = np.flatnonzero(valid)
        target_ids = targets.reshape(-1)[rows]
        # loss_i = logsumexp(logits_i) - logits_i[target_i], computed on max-shifted logits; the same
        # buffer then becomes the softmax probabilities that backward needs.
        logits -= logits.max(axis=1, keepdims=True)
        target_logits = logits[rows, target_ids]
        probabilities = np.exp(logits, out=logits)
        sums = probabilities.sum(axis=1, keepdims=True)
        probabilities /= sums
        losses = np.log(sums[rows, 0]) - target_logits
        penalized_spans = adaptive_spans(self) if self.training else []
        self.loss_cache = (probabilities, valid.reshape(-1), rows, target_ids, penalized_spans, self.decoder.passes)
        return float(np.sum(losses, dtype=np.float64) / rows.size) + sum(span.penalty() for span in penalized_spans)

    def backward(self):
        """Gradients of the last loss() for every parameter: dict name -> array (the model's own
        buffers, overwritten by the next backward; copy them to accumulate over micro-batches)."""
        if self.loss_cache is None or self.loss_cache[-1] != self.decoder.passes:
            self.loss_cache = None
            raise RuntimeError("backward() needs a preceding loss(ids, targets) and no pass through the model since "
                               "(forward, generate, stream or anything else that runs the decoder)")
        probabilities, valid, rows, target_ids, penalized_spans, _ = self.loss_cache
        self.loss_cache = None
        self.zero_grad()
        # d(mean cross-entropy)/d logits = (softmax - one_hot(target)) / count, zero at ignored rows.
        dlogits = probabilities
        dlogits[rows, target_ids] -= 1.0
        dlogits *= (1.0 / rows.size)
        dlogits[~valid] = 0.0
        hidden_2d = self.hidden.reshape(-1, self.config.d_model)
        self.output_grad[...] += dlogits.T @ hidden_2d                   # (V, C)
        dhidden = (dlogits @ self.output_weight).reshape(self.hidden.shape)
        self.decoder.backward(dhidden)
        for span in penalized_spans:
            span.penalty_backward()
        return self.gradients()

    def generate(self, ids, max_new_tokens, temperature=1.0, top_k=None, top_p=None, stop_tokens=None, seed=None,
                 crop_context=False):
        """Continue each prompt by max_new_tokens tokens (fewer when every row hits a stop token),
        reusing keys and values through a KV cache.

        ids: (B, T) or (T,) int array, or a list of prompts of different lengths (left-padded inside,
             each row generated as if alone). Returns the prompt + new tokens in the same form.
        temperature 0 is greedy; top_k keeps the k most likely tokens; top_p keeps the smallest set
        whose probability reaches p. seed: a fresh Generator for this call (None -> self.rng).
        crop_context: with learned positions, go past max_seq_len by conditioning on the last max_seq_len
        tokens (nanoGPT's policy) instead of raising; see generation.stream.
        """
        return generation.generate(self, ids, max_new_tokens, temperature=temperature, top_k=top_k,
                                   top_p=top_p, stop_tokens=stop_tokens, seed=seed, crop_context=crop_context)

    def stream(self, ids, max_new_tokens, temperature=1.0, top_k=None, top_p=None, stop_tokens=None, seed=None,
               crop_context=False):
        """Like generate, but an iterator that yields the new token of every row, (B,), as it comes."""
        return generation.stream(self, ids, max_new_tokens, temperature=temperature, top_k=top_k,
                                 top_p=top_p, stop_tokens=stop_tokens, seed=seed, crop_context=crop_context)

    @classmethod
    def from_pretrained(cls, path):
        """Load a Hugging Face GPT-2 directory (config.json + model.safetensors); see hf_gpt2.py."""
        import hf_gpt2
        return hf_gpt2.load_pretrained(cls, path)

    def save_pretrained(self, path):
        """Write this model in the Hugging Face GPT-2 layout; see hf_gpt2.py."""
        import hf_gpt2
        hf_gpt2.save_pretrained(self, path)

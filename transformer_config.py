"""The model's settings: TransformerConfig, the named presets, the allowed choices, and IGNORE_INDEX.

    from transformer_config import TransformerConfig
    config = TransformerConfig.from_preset("nanogpt-cpu", dropout=0.1)

Nothing here imports a layer: the data pipeline, the checkpoint and Hugging Face loaders and the CLIs
read the settings without pulling in the model, and the model reads them from here.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

# The target id that TransformerLM.loss skips (PyTorch's default for cross_entropy).
IGNORE_INDEX = -100

CHOICES = {
    "positional": ("sinusoidal", "learned", "rope"),
    "norm": ("layernorm", "rmsnorm"),
    "activation": ("gelu_tanh", "gelu", "swiglu"),
    "init": ("xavier", "gpt2"),
    "dtype": ("float32", "float64"),
    "precision": ("fp32", "bf16", "fp16"),  # the matrix products' operands (precision.py)
    "attention": ("full", "sliding", "strided", "fixed"),
}
# The pattern fields each attention pattern needs; every other pattern must leave them None.
PATTERN_FIELDS = {"full": (), "sliding": ("window",), "strided": ("stride",), "fixed": ("stride", "summary")}


@dataclasses.dataclass
class TransformerConfig:
    """Every shape and option of the model. Validated on construction.

    positional: "sinusoidal" (fixed, Vaswani et al.), "learned" (GPT-2), or "rope" (rotary embeddings, Su et al.
          2021; Llama's): no position vectors are added, each attention layer rotates its queries and keys by
          angles proportional to their positions, at frequencies rope_theta^(-2i / head_dim).
    n_kv_heads: key/value heads (grouped-query attention, Ainslie et al. 2023): each serves n_heads / n_kv_heads
          query heads; 1 is multi-query attention; None means n_heads (multi-head attention).
    head_dim: the width of each head; None means d_model / n_heads (some checkpoints set it apart).
    norm_first: False = post-LN, LayerNorm(x + sublayer(x)); True = pre-LN, x + sublayer(LayerNorm(x)).
    norm: "layernorm" or "rmsnorm" (x / sqrt(mean(x^2) + eps) * gain: no centering, no bias; Llama's), for
          every norm of the model; layer_norm_eps is the eps of either.
    tie_weights: the output projection reuses the token embedding matrix.
    activation: "gelu_tanh" (GPT-2's approximation), "gelu" (exact, through erf), or "swiglu" (Llama's gated
          feed-forward W_out(silu(W_gate x) * W_in x), with d_ff the gated width; it has a third matrix, so
          keeping the parameter count of a GELU feed-forward takes d_ff = 2/3 of its width).
    bias: False leaves out the biases of every linear map (attention and feed-forward) and of LayerNorm.
    qkv_bias: whether the query/key/value projection has a bias; None follows `bias`. bias=False with
          qkv_bias=True is Qwen2's arrangement.
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
    dtype: the parameters' and activations' dtype. precision: "fp32", or "bf16" / "fp16" for matrix products on
        operands rounded to that precision with float32 sums (dtype stays float32: the master weights); see
        precision.py.
    adaptive_span: each head learns how far back it looks, up to max_span tokens (Sukhbaatar et al.
        2019; attention must be "full"), through a soft mask with a ramp of span_ramp tokens. In training
        mode TransformerLM.loss adds span_loss_coefficient * (the mean span in tokens) for every layer.
    """
    vocab_size: int = 256
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    n_kv_heads: int | None = None  # None -> n_heads
    head_dim: int | None = None  # None -> d_model // n_heads
    d_ff: int | None = None  # None -> 4 * d_model
    max_seq_len: int = 128
    dropout: float = 0.1
    positional: str = "sinusoidal"
    rope_theta: float = 10000.0
    norm_first: bool = False
    norm: str = "layernorm"
    tie_weights: bool = True
    activation: str = "gelu_tanh"
    bias: bool = True
    qkv_bias: bool | None = None  # None -> bias
    layer_norm_eps: float = 1e-5
    init: str = "xavier"
    dtype: str = "float32"
    precision: str = "fp32"
    attention: str = "full"
    window: int | None = None
    stride: int | None = None
    summary: int | None = None
    adaptive_span: bool = False
    max_span: int | None = None
    span_ramp: int = 32
    span_loss_coefficient: float = 2e-6

    def __post_init__(self) -> None:
        # NumPy scalars (vocab_size=tokens.max() + 1) become Python ones, so the config compares, prints and
        # serializes to JSON like one written by hand.
        for field in dataclasses.fields(self):
            setattr(self, field.name, python_scalar(getattr(self, field.name)))
        if self.d_ff is None and is_positive_integer(self.d_model):
            self.d_ff = 4 * self.d_model
        for name in ("vocab_size", "d_model", "n_heads", "n_layers", "d_ff", "max_seq_len", "span_ramp"):
            if not is_positive_integer(getattr(self, name)):
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        self.check_heads()
        for name in ("dropout", "layer_norm_eps", "span_loss_coefficient", "rope_theta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {value!r}")
            setattr(self, name, float(value))
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        for name in ("layer_norm_eps", "rope_theta"):
            if not 0.0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be positive and finite, got {getattr(self, name)!r}")
        if not 0.0 <= self.span_loss_coefficient < math.inf:
            raise ValueError(f"span_loss_coefficient must be a finite number >= 0, got {self.span_loss_coefficient!r}")
        for name, allowed in CHOICES.items():
            if not isinstance(getattr(self, name), str) or getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.precision != "fp32" and self.dtype != "float32":
            raise ValueError(f"precision={self.precision!r} keeps float32 master weights, so dtype must be 'float32', "
                             f"got {self.dtype!r}")
        if self.qkv_bias is None:
            self.qkv_bias = self.bias
        for name in ("norm_first", "tie_weights", "bias", "qkv_bias", "adaptive_span"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.positional == "rope" and self.head_dim % 2:
            raise ValueError(f"positional='rope' rotates pairs of coordinates, so head_dim must be even, "
                             f"got {self.head_dim}")
        self.check_attention_fields()

    def check_heads(self) -> None:
        """n_heads, n_kv_heads and head_dim (the last two resolved from their defaults)."""
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads}), "
                                 "or head_dim must be given")
            self.head_dim = self.d_model // self.n_heads
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        for name in ("n_kv_heads", "head_dim"):
            if not is_positive_integer(getattr(self, name)):
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_kv_heads ({self.n_kv_heads}) must divide n_heads ({self.n_heads}): each key/value "
                             "head serves a whole group of query heads")

    def check_attention_fields(self) -> None:
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
        for name in ("n_heads", "n_kv_heads"):
            if self.attention in ("strided", "fixed") and getattr(self, name) % 2:
                raise ValueError(f"{name} must be even for attention={self.attention!r} (half the heads follow each of "
                                 f"its two patterns, with key/value heads of their own), got {getattr(self, name)}")
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
    def numpy_dtype(self) -> np.dtype:
        """The NumPy dtype of every parameter and activation."""
        return np.dtype(self.dtype)

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """name -> shape of every parameter TransformerLM(self) holds, in the order of its parameters(),
        computed without allocating anything (to check a file's tensors before building the model).
        Every parameter has dtype self.numpy_dtype. C = d_model."""
        C, H, D = self.d_model, self.n_heads, self.head_dim
        qkv_width = (H + 2 * self.n_kv_heads) * D
        norm = {"weight": (C,), "bias": (C,)} if self.norm == "layernorm" and self.bias else {"weight": (C,)}
        feed_forward = {"W_in": (C, self.d_ff), "b_in": (self.d_ff,)}
        if self.activation == "swiglu":
            feed_forward.update({"W_gate": (C, self.d_ff), "b_gate": (self.d_ff,)})
        feed_forward.update({"W_out": (self.d_ff, C), "b_out": (C,)})
        if not self.bias:
            feed_forward = {name: shape for name, shape in feed_forward.items() if not name.startswith("b_")}
        shapes = {} if self.tie_weights else {"lm_head.weight": (self.vocab_size, C)}
        shapes["decoder.token_embedding.weight"] = (self.vocab_size, C)
        if self.positional == "learned":
            shapes["decoder.position_embedding.weight"] = (self.max_seq_len, C)
        for layer in range(self.n_layers):
            block = f"decoder.blocks.{layer}."
            shapes[block + "attention.W_qkv"] = (C, qkv_width)
            if self.qkv_bias:
                shapes[block + "attention.b_qkv"] = (qkv_width,)
            shapes[block + "attention.W_out"] = (H * D, C)
            if self.bias:
                shapes[block + "attention.b_out"] = (C,)
            if self.adaptive_span:
                shapes[block + "attention.pattern.span"] = (self.n_heads,)
            for sublayer, sublayer_shapes in (("norm1.", norm), ("feed_forward.", feed_forward), ("norm2.", norm)):
                shapes.update({block + sublayer + name: shape for name, shape in sublayer_shapes.items()})
        if self.norm_first:
            shapes.update({"decoder.final_norm." + name: shape for name, shape in norm.items()})
        return shapes

    @classmethod
    def from_preset(cls, name: str, **overrides: object) -> TransformerConfig:
        """A named shape (see PRESETS) with any field overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


def python_scalar(value: object) -> object:
    """A NumPy scalar as the Python bool, int, float or str it stands for; anything else unchanged."""
    if isinstance(value, (np.bool_, np.integer, np.floating, np.str_)):
        return value.item()
    return value


def is_positive_integer(value: object) -> bool:
    """True for a Python int >= 1 (not a bool, not a float such as 2.0)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


GPT2_STYLE = dict(positional="learned", norm_first=True, tie_weights=True, activation="gelu_tanh",
                  init="gpt2")
PRESETS = {
    # The seed's demo: small enough to run in a blink.
    "demo": dict(vocab_size=1000, d_model=64, n_heads=4, n_layers=2, max_seq_len=128),
    # nanoGPT's CPU quick start for character-level Shakespeare (0.8M parameters).
    "nanogpt-cpu": dict(vocab_size=65, d_model=128, n_heads=4, n_layers=4, max_seq_len=64, dropout=0.0,
                        **GPT2_STYLE),
    # nanogpt-cpu's size with Llama's choices: rotary positions, RMSNorm, SwiGLU, 2 key/value heads for 4 query
    # heads, no biases. d_ff = 393 keeps the parameter count: 809,728 against nanogpt-cpu's 809,856
    # (TransformerLM(...).num_parameters(); the nearest d_ff, each unit of d_ff is 1,536 parameters).
    "modern-cpu": dict(vocab_size=65, d_model=128, n_heads=4, n_layers=4, max_seq_len=64, dropout=0.0,
                       positional="rope", norm="rmsnorm", activation="swiglu", norm_first=True, bias=False,
                       tie_weights=True, n_kv_heads=2, d_ff=393, init="gpt2"),
    # GPT-2 small (124M parameters).
    "gpt2": dict(vocab_size=50257, d_model=768, n_heads=12, n_layers=12, max_seq_len=1024, dropout=0.1,
                 **GPT2_STYLE),
}

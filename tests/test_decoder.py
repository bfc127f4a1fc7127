import numpy as np
import pytest
from gradcheck import RELATIVE_ERROR_BOUND, check_gradients, check_layer

from decoder import Decoder, DecoderBlock, residual_backward, residual_forward
from layer_norm import LayerNorm
from module import Module
from transformer_lm import TransformerConfig, TransformerLM


def config_for(**overrides):
    return TransformerConfig(**{**dict(vocab_size=13, d_model=8, n_heads=2, n_layers=2, max_seq_len=10,
                                       dropout=0.0, dtype="float64"), **overrides})


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_block_gradient_check(norm_first, dropout):
    rng = np.random.default_rng(0)
    dropout_rng = np.random.default_rng(1)
    block = DecoderBlock(config_for(norm_first=norm_first, dropout=dropout), dropout_rng)
    for value in block.parameters().values():
        value[...] += rng.standard_normal(value.shape) * 0.3
    errors = check_layer(block, rng.standard_normal((2, 4, 8)), rng, dropout_rng=dropout_rng, max_count=25)
    assert len(errors) == 1 + 12  # the input and every parameter of the block's four sub-layers
    assert max(errors.values()) < RELATIVE_ERROR_BOUND, errors


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("positional", ["sinusoidal", "learned"])
def test_decoder_shapes_and_structure(norm_first, positional):
    config = config_for(norm_first=norm_first, positional=positional, n_layers=3)
    decoder = Decoder(config, np.random.default_rng(0))
    out = decoder.forward(np.zeros((4, 7), dtype=np.int64))
    assert out.shape == (4, 7, 8)
    assert len(decoder.blocks) == 3
    names = decoder.parameters()
    assert ("final_norm.weight" in names) == norm_first
    assert ("position_embedding.weight" in names) == (positional == "learned")


def test_post_ln_blocks_end_normalized_and_pre_ln_decoder_ends_with_final_norm():
    for norm_first in (False, True):
        model = TransformerLM(config_for(norm_first=norm_first), seed=2)
        hidden = model.decoder.forward(np.random.default_rng(3).integers(0, 13, (2, 5)))
        # Either way the decoder's output is a LayerNorm output (gain 1, bias 0 at initialization).
        np.testing.assert_allclose(hidden.mean(axis=-1), 0.0, atol=1e-10)
        np.testing.assert_allclose(hidden.var(axis=-1), 1.0, rtol=1e-3)


class Scale(Module):
    """A stand-in sub-layer y = x * s, enough to check the residual wiring."""

    def __init__(self, scale):
        super().__init__()
        self.add_parameter("scale", np.asarray(scale, dtype=np.float64))

    def forward(self, x):
        self.x = x
        return x * self.params["scale"]

    def backward(self, dout):
        self.grads["scale"] += np.sum(dout * self.x, axis=(0, 1))
        return dout * self.params["scale"]


@pytest.mark.parametrize("norm_first", [False, True])
def test_residual_arrangements(norm_first):
    rng = np.random.default_rng(3)
    sublayer, norm = Scale(rng.standard_normal(4)), LayerNorm(4, eps=1e-5, dtype=np.float64)
    x = rng.standard_normal((2, 3, 4))
    out = residual_forward(x, sublayer, norm, norm_first)
    if norm_first:
        expected = x + LayerNorm(4, 1e-5, np.float64).forward(x) * sublayer.params["scale"]
    else:
        expected = LayerNorm(4, 1e-5, np.float64).forward(x + x * sublayer.params["scale"])
    np.testing.assert_allclose(out, expected, atol=1e-12)

    weights = rng.standard_normal(out.shape)
    sublayer.zero_grad()
    norm.zero_grad()
    dx = residual_backward(weights, sublayer, norm, norm_first)
    errors = check_gradients(lambda: float(np.sum(residual_forward(x, sublayer, norm, norm_first) * weights)),
                             {"x": dx, "scale": sublayer.grads["scale"].copy(), "weight": norm.grads["weight"].copy()},
                             {"x": x, "scale": sublayer.params["scale"], "weight": norm.params["weight"]}, rng)
    assert max(errors.values()) < RELATIVE_ERROR_BOUND, errors

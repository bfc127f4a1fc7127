import numpy as np
import pytest
from gradcheck import RELATIVE_ERROR_BOUND, check_layer

from decoder import Decoder, DecoderBlock
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

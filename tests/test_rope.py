"""Rotary position embeddings (positional_encoding.rope_tables / apply_rope / apply_rope_backward): the formula,
the rotation's properties, its backward, and Hugging Face Llama's rotate-half convention."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import require_oracle
from gradcheck import RELATIVE_ERROR_BOUND, check_gradients
from torch_reference import reference_loss

from positional_encoding import apply_rope, apply_rope_backward, rope_tables


def rotated(x, positions, theta=10000.0):
    """x (B, H, T, D) rotated at positions (T,) or (B, T)."""
    cos, sin = rope_tables(positions, x.shape[-1], theta, x.dtype)
    return apply_rope(x, cos, sin)


@pytest.mark.parametrize("head_dim,theta", [(2, 10000.0), (8, 10000.0), (6, 500.0), (12, 1e6)])
def test_tables_follow_the_rotate_half_formula(head_dim, theta):
    positions = np.array([0, 1, 5, 17, 300])
    cos, sin = rope_tables(positions, head_dim, theta, np.float64)
    assert cos.shape == sin.shape == (5, head_dim) and cos.dtype == np.float64
    for row, position in enumerate(positions):
        for column in range(head_dim):
            i = column % (head_dim // 2)  # coordinate i pairs with i + D/2: both turn by the same angle
            angle = position * theta ** (-2 * i / head_dim)
            assert cos[row, column] == pytest.approx(math.cos(angle), abs=1e-12)
            assert sin[row, column] == pytest.approx(math.sin(angle), abs=1e-12)


def test_tables_per_row_broadcast_against_heads_and_keep_the_dtype():
    positions = np.array([[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]])  # a left-padded row and a full one
    cos, sin = rope_tables(positions, 4, 10000.0, np.float32)
    assert cos.shape == sin.shape == (2, 1, 5, 4) and cos.dtype == sin.dtype == np.float32
    alone, _ = rope_tables(np.arange(3), 4, 10000.0, np.float32)
    np.testing.assert_array_equal(cos[0, 0, 2:], alone)  # each row as if alone
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 4)).astype(np.float32)
    assert apply_rope(x, cos, sin).dtype == np.float32


def test_rotate_half_by_hand():
    """One pair (x0, x2) and one (x1, x3) of a 4-wide head, turned by their own angles."""
    x = np.array([1.0, 2.0, 3.0, 4.0])[None, None, None]
    position, theta = 3, 100.0
    out = rotated(x, np.array([position]), theta)[0, 0, 0]
    for i, (first, second) in enumerate([(0, 2), (1, 3)]):
        angle = position * theta ** (-2 * i / 4)
        c, s = math.cos(angle), math.sin(angle)
        assert out[first] == pytest.approx(x[0, 0, 0, first] * c - x[0, 0, 0, second] * s, abs=1e-12)
        assert out[second] == pytest.approx(x[0, 0, 0, second] * c + x[0, 0, 0, first] * s, abs=1e-12)


def test_position_zero_is_the_identity():
    x = np.random.default_rng(1).standard_normal((2, 3, 1, 8))
    np.testing.assert_array_equal(rotated(x, np.array([0])), x)


def test_rotation_preserves_each_head_vectors_norm():
    x = np.random.default_rng(2).standard_normal((2, 3, 7, 8))
    out = rotated(x, np.arange(7) * 13)
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-12)


def test_query_key_product_depends_only_on_the_position_difference():
    rng = np.random.default_rng(3)
    q, k = rng.standard_normal((1, 1, 1, 8)), rng.standard_normal((1, 1, 1, 8))
    products = {}
    for query_position, key_position in [(5, 2), (8, 5), (103, 100), (3, 0), (7, 7), (2, 2), (50, 60), (0, 10)]:
        product = float(np.sum(rotated(q, np.array([query_position])) * rotated(k, np.array([key_position]))))
        products.setdefault(query_position - key_position, []).append(product)
    for difference, values in products.items():
        np.testing.assert_allclose(values, values[0], rtol=1e-10, err_msg=str(difference))
    assert not np.isclose(products[3][0], products[0][0])  # and the difference does matter


def test_backward_is_the_inverse_rotation():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((2, 3, 6, 8)), rng.standard_normal((2, 3, 6, 8))
    cos, sin = rope_tables(np.arange(6) * 7, 8, 10000.0, np.float64)
    np.testing.assert_allclose(apply_rope_backward(apply_rope(x, cos, sin), cos, sin), x, atol=1e-12)
    np.testing.assert_allclose(apply_rope(apply_rope_backward(x, cos, sin), cos, sin), x, atol=1e-12)
    # The backward is the transpose of the forward's Jacobian: <R x, y> == <x, R^T y>.
    assert np.sum(apply_rope(x, cos, sin) * y) == pytest.approx(np.sum(x * apply_rope_backward(y, cos, sin)),
                                                                rel=1e-12)


@pytest.mark.parametrize("positions", [np.arange(5), np.array([[0, 0, 1, 2, 3], [4, 5, 6, 7, 8]])])
def test_rope_gradient_check(positions):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 5, 6))
    cos, sin = rope_tables(positions, 6, 50.0, np.float64)
    weights = rng.standard_normal(x.shape)
    analytic = {"input": apply_rope_backward(weights, cos, sin)}
    errors = check_gradients(lambda: float(np.sum(apply_rope(x, cos, sin) * weights)), analytic, {"input": x}, rng)
    assert errors["input"] < RELATIVE_ERROR_BOUND, errors


@pytest.mark.parametrize("head_dim,theta", [(8, 10000.0), (6, 1e6)])
def test_equals_transformers_llama_rotary_embedding(head_dim, theta):
    torch = require_oracle("torch")
    require_oracle("transformers")
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb
    config = LlamaConfig(hidden_size=4 * head_dim, num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim,
                         rope_theta=theta, max_position_embeddings=64)
    rotary = LlamaRotaryEmbedding(config)
    rng = np.random.default_rng(6)
    q, k = rng.standard_normal((2, 4, 9, head_dim)), rng.standard_normal((2, 2, 9, head_dim))
    positions = np.array([[0, 0, 0, 0, 1, 2, 3, 4, 5], np.arange(30, 39)])  # a left-padded row and a later one
    their_cos, their_sin = rotary(torch.tensor(q), torch.tensor(positions))
    their_q, their_k = apply_rotary_pos_emb(torch.tensor(q), torch.tensor(k), their_cos, their_sin)
    cos, sin = rope_tables(positions, head_dim, theta, np.float64)
    # transformers forms the angles in float32: agreement to float32 precision of angles below 40 radians.
    np.testing.assert_allclose(cos[:, 0], their_cos.numpy(), atol=1e-5)
    np.testing.assert_allclose(sin[:, 0], their_sin.numpy(), atol=1e-5)
    np.testing.assert_allclose(apply_rope(q, cos, sin), their_q.numpy(), atol=1e-5)
    np.testing.assert_allclose(apply_rope(k, cos, sin), their_k.numpy(), atol=1e-5)


def llama_weights_as_ours(torch, state, n_layers, qkv_bias):
    """A transformers Llama-family state dict (nn.Linear weights are (out, in)) under our names, (in, out)."""
    params = {"decoder.token_embedding.weight": state["model.embed_tokens.weight"],
              "lm_head.weight": state["lm_head.weight"], "decoder.final_norm.weight": state["model.norm.weight"]}
    for layer in range(n_layers):
        theirs, ours = f"model.layers.{layer}.", f"decoder.blocks.{layer}."
        params[ours + "attention.W_qkv"] = torch.cat([state[f"{theirs}self_attn.{n}_proj.weight"].T for n in "qkv"], 1)
        if qkv_bias:
            params[ours + "attention.b_qkv"] = torch.cat([state[f"{theirs}self_attn.{n}_proj.bias"] for n in "qkv"])
        params[ours + "attention.W_out"] = state[theirs + "self_attn.o_proj.weight"].T
        params[ours + "norm1.weight"] = state[theirs + "input_layernorm.weight"]
        params[ours + "norm2.weight"] = state[theirs + "post_attention_layernorm.weight"]
        for our_name, their_name in (("W_gate", "gate_proj"), ("W_in", "up_proj"), ("W_out", "down_proj")):
            params[ours + "feed_forward." + our_name] = state[f"{theirs}mlp.{their_name}.weight"].T
    return params


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "mistral"])
def test_the_torch_reference_equals_transformers(architecture):
    """The oracle itself (tests/torch_reference.py: rope, grouped-query attention, head_dim, the Qwen2 q/k/v
    biases, Mistral's window) against transformers' own models, so that the oracle checks say what they claim."""
    torch = require_oracle("torch")
    transformers = require_oracle("transformers")
    C, H, n_kv_heads, D, V, d_ff, L, window = 24, 4, 2, 10, 37, 20, 2, 4
    config_class, model_class = {"llama": ("LlamaConfig", "LlamaForCausalLM"),
                                 "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
                                 "mistral": ("MistralConfig", "MistralForCausalLM")}[architecture]
    extra = dict(sliding_window=window) if architecture == "mistral" else {}
    their_config = getattr(transformers, config_class)(
        vocab_size=V, hidden_size=C, intermediate_size=d_ff, num_hidden_layers=L, num_attention_heads=H,
        num_key_value_heads=n_kv_heads, head_dim=D, rms_norm_eps=1e-6, rope_theta=500.0, tie_word_embeddings=False,
        attn_implementation="eager", **extra)
    torch.manual_seed(0)
    theirs = getattr(transformers, model_class)(their_config).double().eval()
    with torch.no_grad():
        for value in theirs.parameters():
            value.normal_(0.0, 0.3)
    ours = SimpleNamespace(
        vocab_size=V, d_model=C, n_heads=H, n_kv_heads=n_kv_heads, head_dim=D, n_layers=L, positional="rope",
        rope_theta=500.0, norm="rmsnorm", layer_norm_eps=1e-6, activation="swiglu", bias=False,
        qkv_bias=architecture == "qwen2", norm_first=True, tie_weights=False,
        attention="sliding" if architecture == "mistral" else "full", window=window if extra else None)
    params = llama_weights_as_ours(torch, theirs.state_dict(), L, ours.qkv_bias)
    ids = torch.randint(0, V, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = theirs(ids).logits.numpy()
        actual = reference_loss(torch, ours, params, ids.numpy(), ids.numpy())[0].numpy()
    # transformers computes the rotation angles in float32; the rest is float64.
    np.testing.assert_allclose(actual, expected, atol=1e-5 * np.abs(expected).max())
    if architecture == "mistral":  # the window matters here: one key more changes the logits
        ours.window += 1
        with torch.no_grad():
            wider = reference_loss(torch, ours, params, ids.numpy(), ids.numpy())[0].numpy()
        assert not np.allclose(wider, expected, atol=1e-3)

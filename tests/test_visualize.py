import sys

import numpy as np
import pytest

import visualize
from checkpoint import save_checkpoint
from sparse_attention import adaptive_spans
from tokenizer import CharTokenizer
from transformer_lm import TransformerConfig, TransformerLM


def read_png(path):
    """The image (height, width, channels) as matplotlib reads it back; the PNG signature checked first."""
    import matplotlib.image
    with open(path, "rb") as file:
        assert file.read(8) == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(path)


def assert_picture(path, panel_rows, panel_columns):
    image = read_png(path)
    side = visualize.PANEL_INCHES * visualize.DPI
    assert image.shape[:2] == (round(panel_rows * side), round(panel_columns * side))
    # Not blank: many distinct colours, dark marks on the white background.
    assert len(np.unique(image.reshape(-1, image.shape[2]), axis=0)) > 10
    assert image[..., :3].min() < 0.2


def test_patterns_picture(tmp_path):
    out = tmp_path / "patterns.png"
    visualize.main(["patterns", "--seq-len", "32", "--out", str(out)])
    assert_picture(out, 1, 6)  # full, sliding, and both head groups of strided and fixed


@pytest.mark.parametrize("pattern", [dict(adaptive_span=True, max_span=8, span_ramp=2),
                                     dict(attention="fixed", stride=3, summary=1)])
def test_attention_picture_from_a_checkpoint(tmp_path, pattern):
    tokenizer = CharTokenizer.from_text("hello world")
    config = TransformerConfig(vocab_size=tokenizer.vocab_size, d_model=8, n_heads=2, n_layers=2, max_seq_len=16,
                               **pattern)
    model = TransformerLM(config, seed=0)
    for index, span in enumerate(adaptive_spans(model)):
        span.params["span"][...] = [0.2 + 0.3 * index, 0.6]
    save_checkpoint(tmp_path / "run", model, tokenizer=tokenizer)
    out = tmp_path / "attention.png"
    visualize.main(["attention", "--checkpoint", str(tmp_path / "run"), "--prompt", "hello world", "--out", str(out)])
    assert_picture(out, 2 + config.adaptive_span, 2)  # a row per layer (+ the spans), a column per head


def test_attention_weights_are_causal_rows_that_sum_to_one():
    tokenizer = CharTokenizer.from_text("abc")
    model = TransformerLM(TransformerConfig(vocab_size=3, d_model=8, n_heads=2, n_layers=1, attention="strided",
                                            stride=2), seed=0)
    weights = visualize.attention_weights(model, np.array([[0, 1, 2, 1, 0]]))
    assert len(weights) == 1 and weights[0].shape == (2, 5, 5)
    np.testing.assert_allclose(weights[0].sum(axis=-1), 1.0, rtol=1e-6)
    assert np.all(np.triu(weights[0], 1) == 0.0)
    assert visualize.token_labels(tokenizer, [0, 2]) == ["a", "c"]


@pytest.mark.parametrize("damage", ["missing", "garbled config"])
def test_a_bad_checkpoint_is_one_error_line(tmp_path, damage):
    directory = tmp_path / "run"
    if damage == "garbled config":
        directory.mkdir()
        (directory / "config.json").write_text("{not json")
    with pytest.raises(SystemExit) as raised:
        visualize.main(["attention", "--checkpoint", str(directory), "--prompt", "hi"])
    message = str(raised.value.code)
    assert message.startswith("error: ") and "\n" not in message and str(directory) in message


def test_a_missing_matplotlib_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(SystemExit, match=r"matplotlib, which is not installed \(pip install matplotlib\)"):
        visualize.main(["patterns", "--seq-len", "8", "--out", str(tmp_path / "patterns.png")])

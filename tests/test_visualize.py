import json
import math
import sys

import numpy as np
import pytest

import visualize
from checkpoint import save_checkpoint
from sparse_attention import adaptive_spans, effective_spans
from tokenizer import CharTokenizer
from transformer_config import TransformerConfig
from transformer_lm import TransformerLM

matplotlib_image = pytest.importorskip("matplotlib.image", reason="the pictures need matplotlib")

TEXT = "hello world, the quick brown fox jumps over the lazy dog\n"


def assert_png(path, min_size, max_size):
    """A real PNG of plausible (height, width) in pixels, not blank, at most 200 KB."""
    with open(path, "rb") as file:
        assert file.read(8) == b"\x89PNG\r\n\x1a\n"
    image = matplotlib_image.imread(path)
    assert min_size[0] <= image.shape[0] <= max_size[0] and min_size[1] <= image.shape[1] <= max_size[1], image.shape
    # Not blank: many distinct colours, dark marks on the white background.
    assert len(np.unique(image.reshape(-1, image.shape[2]), axis=0)) > 10
    assert image[..., :3].min() < 0.2
    assert path.stat().st_size < 200_000


def texts(artists):
    return [artist.get_text() for artist in artists]


def checkpoint(directory, n_heads=2, n_layers=2, **pattern):
    tokenizer = CharTokenizer.from_text(TEXT)
    config = TransformerConfig(vocab_size=tokenizer.vocab_size, d_model=4 * n_heads, n_heads=n_heads,
                               n_layers=n_layers, max_seq_len=128, **pattern)
    model = TransformerLM(config, seed=0)
    save_checkpoint(directory, model, tokenizer=tokenizer)
    return model, tokenizer


# ----------------------------------------------------------------------------------------------
# Pattern masks


def test_patterns_picture_with_a_legend_for_black_and_white(tmp_path, capsys):
    out = tmp_path / "patterns.png"
    visualize.main(["patterns", "--seq-len", "32", "--out", str(out)])
    assert capsys.readouterr().out == f"written to {out}\n"
    side = visualize.PANEL_INCHES * visualize.DPI
    assert_png(out, (side, 6 * side), (side + 100, 6 * side))  # full, sliding, both head groups of strided and fixed

    figure = visualize.patterns_figure(visualize.pattern_panels(32, 8, 6, 2))
    (legend,) = figure.legends
    assert [label.split(":")[0] for label in texts(legend.get_texts())] == ["black", "white"]
    axes = figure.axes
    assert len(axes) == 6 and {(axis.get_xlabel(), axis.get_ylabel()) for axis in axes} == {
        ("key position", "query position")}
    # Black (a high value in the Greys map) is exactly where the key is seen: the causal triangle for "full".
    full = axes[0].get_images()[0].get_array()
    np.testing.assert_array_equal(np.asarray(full), np.tril(np.ones((32, 32))))


# ----------------------------------------------------------------------------------------------
# Attention maps


def test_attention_picture_has_a_colorbar_axis_titles_and_the_prompt(tmp_path, capsys):
    checkpoint(tmp_path / "run", attention="fixed", stride=3, summary=1)
    out = tmp_path / "attention.png"
    visualize.main(["attention", "--checkpoint", str(tmp_path / "run"), "--prompt", "hello world", "--out", str(out)])
    assert capsys.readouterr().out == f"written to {out}\n"  # no spans chart without adaptive spans
    side = visualize.PANEL_INCHES * visualize.DPI
    assert_png(out, (2 * side, 2 * side), (2 * side + 100, 2 * side + 150))  # 2 layers x 2 heads + colorbar

    weights = [np.tril(np.full((2, 11, 11), 0.5))] * 2
    figure = visualize.attention_figure(weights, list("hello world"), "attention weights for 'hello world'")
    assert "'hello world'" in figure.get_suptitle()
    panels = [axis for axis in figure.axes if axis.get_images()]
    colorbars = [axis for axis in figure.axes if axis.get_ylabel() == "attention weight"]
    assert len(panels) == 4 and len(colorbars) == 1
    assert {(axis.get_xlabel(), axis.get_ylabel()) for axis in panels} == {("key token", "query token")}
    assert [axis.get_title() for axis in panels] == ["layer 0, head 0", "layer 0, head 1", "layer 1, head 0",
                                                     "layer 1, head 1"]


def test_long_prompts_get_at_most_32_evenly_spaced_tick_labels():
    labels = [f"t{index}" for index in range(100)]
    positions, shown = visualize.thinned_ticks(labels)
    assert len(positions) <= 32 and positions[0] == 0 and len(set(np.diff(positions))) == 1
    assert positions[-1] + np.diff(positions)[0] >= 100  # evenly spaced over the whole prompt
    assert shown == [labels[position] for position in positions]
    assert visualize.thinned_ticks(list("short")) == ([0, 1, 2, 3, 4], list("short"))
    assert visualize.thinned_ticks(["a-very-long-token"])[1] == ["a-very-lo…"]

    figure = visualize.attention_figure([np.eye(100)[None]], labels, "a long prompt")
    (axis,) = [axis for axis in figure.axes if axis.get_images()]
    assert len(axis.get_xticks()) == len(axis.get_yticks()) == len(positions)
    assert texts(axis.get_xticklabels()) == shown
    assert axis.get_xlabel() == f"key token (1 in {positions[1]} labelled)"
    assert {label.get_rotation() for label in axis.get_xticklabels()} == {90}  # words turn to fit
    figure = visualize.attention_figure([np.eye(5)[None]], list("short"), "characters")
    (axis,) = [axis for axis in figure.axes if axis.get_images()]
    assert {label.get_rotation() for label in axis.get_xticklabels()} == {0}  # characters stay upright


def test_token_labels_show_spaces_and_newlines():
    tokenizer = CharTokenizer.from_text("a \n")
    assert visualize.token_labels(tokenizer, tokenizer.encode("a \n")) == ["a", "␣", "\\n"]


def test_a_long_prompt_is_cut_in_the_title():
    assert visualize.quoted_prompt("ROMEO:") == "'ROMEO:'"
    long = visualize.quoted_prompt("x" * 500 + "\n")
    assert len(long) <= 60 and long.startswith("'xxx") and long.endswith("…'")


def test_many_heads_give_one_picture_per_layer(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(visualize, "MAX_PANELS", 5)  # a small model stands in for a big one: 6 panels > 5
    checkpoint(tmp_path / "run", n_heads=3, n_layers=2)
    out = tmp_path / "attn.png"
    visualize.main(["attention", "--checkpoint", str(tmp_path / "run"), "--prompt", "the quick fox", "--out", str(out)])
    paths = [tmp_path / f"attn-layer{layer}.png" for layer in range(2)]
    assert capsys.readouterr().out == "".join(f"written to {path}\n" for path in paths)
    assert not out.exists()
    side = visualize.PANEL_INCHES * visualize.DPI
    for path in paths:
        assert_png(path, (side, 3 * side), (side + 150, 3 * side + 150))

    # A layer of 6 heads wraps after HEADS_PER_ROW (4) panels: 2 rows, the last 2 places left empty.
    figure = visualize.attention_figure([np.ones((6, 9, 9)) / 9], list(TEXT[:9]), "layer 2: ...", [2])
    panels = [axis for axis in figure.axes if axis.get_images()]
    assert [axis.get_title() for axis in panels] == [f"layer 2, head {head}" for head in range(6)]
    assert {axis.get_subplotspec().rowspan.start for axis in panels} == {0, 1}
    assert figure.get_suptitle() == "layer 2: ..."


def test_attention_weights_are_causal_rows_that_sum_to_one():
    model = TransformerLM(TransformerConfig(vocab_size=3, d_model=8, n_heads=2, n_layers=1, attention="strided",
                                            stride=2), seed=0)
    weights = visualize.attention_weights(model, np.array([[0, 1, 2, 1, 0]]))
    assert len(weights) == 1 and weights[0].shape == (2, 5, 5)
    np.testing.assert_allclose(weights[0].sum(axis=-1), 1.0, rtol=1e-6)
    assert np.all(np.triu(weights[0], 1) == 0.0)


# ----------------------------------------------------------------------------------------------
# Adaptive spans


def test_the_span_chart_shows_the_effective_span(tmp_path, capsys):
    model, _ = checkpoint(tmp_path / "run", adaptive_span=True, max_span=8, span_ramp=2)
    for pattern, spans in zip(adaptive_spans(model), ([0.25, 1.0], [0.0, 0.5])):
        pattern.params["span"][...] = spans
    save_checkpoint(tmp_path / "run", model, tokenizer=CharTokenizer.from_text(TEXT))
    # learned span + ramp, at most max_span: 2 + 2, 8 + 2 -> 8; 0 + 2 (a zero span still sees the ramp), 4 + 2.
    expected = [[4.0, 8.0], [2.0, 6.0]]
    assert effective_spans(model) == expected

    out = tmp_path / "attention"
    visualize.main(["attention", "--checkpoint", str(tmp_path / "run"), "--prompt", "hello", "--out", str(out)])
    assert capsys.readouterr().out == f"written to {out}.png\nwritten to {out}-spans.png\n"
    assert_png(tmp_path / "attention-spans.png", (300, 500), (450, 800))

    figure = visualize.span_figure([[2.0, 8.0], [0.0, 4.0]], expected, max_span=8, ramp=2)
    (axis,) = figure.axes
    heights = [bar.get_height() for bar in axis.patches]
    # Per head: the learned bars of each layer, then the effective bars (head 0 first).
    assert heights == [2.0, 0.0, 4.0, 2.0, 8.0, 4.0, 8.0, 6.0]
    assert "ramp" in axis.get_title() and axis.get_ylabel() == "keys attended (tokens)"
    assert "max_span 8" in texts(axis.get_legend().get_texts())


def test_the_span_log_line_says_the_keys_attended(tmp_path, capsys):
    import train
    (tmp_path / "input.txt").write_text(TEXT * 20)
    train.main(["--data", str(tmp_path / "input.txt"), "--out-dir", str(tmp_path / "run"), "--n-layers", "1",
                "--n-heads", "2", "--d-model", "8", "--block-size", "8", "--batch-size", "2", "--eval-iters", "1",
                "--max-iters", "1", "--warmup-iters", "1", "--sample-tokens", "0", "--adaptive-span",
                "--max-span", "8", "--span-ramp", "3"])
    # Spans start at 0, yet each head sees the ramp's 3 keys.
    assert "  layer 0 spans: 3.0 3.0 keys attended (learned 0.0 0.0 + the 3-token ramp, at most 8)\n" in (
        capsys.readouterr().out)


# ----------------------------------------------------------------------------------------------
# Loss curves


def settings_row(iteration, resumed):
    return {"kind": "settings", "iter": iteration, "resumed": resumed, "preset": "shakespeare-char-cpu",
            "tokenizer": "char", "data": "input.txt", "parameters": 812_000, "tokens_per_iter": 768,
            "config": {"n_layers": 4, "n_heads": 4, "d_model": 128, "max_seq_len": 64}}


def run_rows():
    """A run of 30 iterations, evaluated every 10, killed after step 24 and resumed from its checkpoint at 20:
    the steps 20..24 of the first attempt are superseded, its evaluation at 20 is logged again."""
    rows = [settings_row(0, False)]
    for iteration in range(25):
        if iteration % 10 == 0:
            rows.append({"kind": "eval", "iter": iteration, "train_loss": 3.0, "val_loss": 3.1, "lr": 1e-3})
        rows.append({"kind": "train", "iter": iteration, "loss": 4.0, "lr": 1e-3})
    rows.append(settings_row(20, True))
    for iteration in range(20, 31):
        if iteration % 10 == 0:
            rows.append({"kind": "eval", "iter": iteration, "train_loss": 2.0, "val_loss": 2.1, "lr": 1e-4})
        if iteration < 30:
            rows.append({"kind": "train", "iter": iteration, "loss": 2.5, "lr": 1e-4})
    return rows


def test_loss_figure_draws_training_loss_evaluations_lr_and_the_resume():
    figure = visualize.loss_figure(run_rows(), fallback_title="unused")
    axis, lr_axis = figure.axes
    lines = {line.get_label(): line for line in axis.get_lines() + lr_axis.get_lines()}
    smoothed = lines["training loss (smoothed)"]
    assert list(smoothed.get_xdata()) == list(range(30))  # the superseded 20..24 of the first attempt are gone
    assert list(lines["training loss (smoothed)"].get_ydata()[-10:]) != [4.0] * 10  # the resumed steps' losses
    assert list(lines["val loss (evaluation)"].get_xdata()) == [0, 10, 20, 30]
    assert list(lines["val loss (evaluation)"].get_ydata()) == [3.1, 3.1, 2.1, 2.1]  # 20: the one logged last
    assert list(lines["resumed"].get_xdata()) == [20, 20]
    assert list(lines["learning rate"].get_ydata()) == [1e-3] * 20 + [1e-4] * 10
    assert lr_axis.get_ylabel() == "learning rate" and axis.get_xlabel() == "iteration"
    assert axis.get_title() == ("shakespeare-char-cpu on input.txt, char tokens\n"
                                "4 layers, 4 heads, d_model 128, context 64, 0.81M parameters, 768 tokens/iter")
    assert texts(axis.get_legend().get_texts()) == ["training loss (smoothed)", "train loss (evaluation)",
                                                    "val loss (evaluation)", "resumed", "learning rate"]


def test_loss_figure_of_an_old_run_with_eval_rows_only():
    rows = [{"iter": step, "train_loss": 3.0 - step / 10, "val_loss": 3.1 - step / 10} for step in (0, 5, 10)]
    figure = visualize.loss_figure(rows, fallback_title="training run old")
    (axis,) = figure.axes  # no learning rate logged: no second axis
    assert axis.get_title() == "training run old"
    assert sorted(line.get_label() for line in axis.get_lines()) == ["train loss (evaluation)", "val loss (evaluation)"]


def test_smoothing_is_a_debiased_moving_average():
    np.testing.assert_allclose(visualize.smoothed([2.0] * 5), [2.0] * 5)  # no pull towards 0 at the start
    # By hand, factor 0.5: averages 0.5, 1.25 / debiasing 0.5, 0.75 -> 1, 5/3.
    np.testing.assert_allclose(visualize.smoothed([1.0, 2.0], factor=0.5), [1.0, 5 / 3])


def test_plot_of_a_resumed_run_writes_loss_png(tmp_path, capsys):
    import train
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in run_rows()))
    train.main(["--plot", str(tmp_path)])
    assert capsys.readouterr().out == f"wrote {tmp_path / 'loss.png'}\n"
    assert_png(tmp_path / "loss.png", (450, 700), (450, 700))


def test_a_real_run_and_its_resume_are_drawn(tmp_path):
    import train
    (tmp_path / "input.txt").write_text(TEXT * 20)
    flags = ["--data", str(tmp_path / "input.txt"), "--out-dir", str(tmp_path / "run"), "--n-layers", "2",
             "--n-heads", "2", "--d-model", "8", "--block-size", "8", "--batch-size", "2", "--eval-iters", "1",
             "--eval-interval", "3", "--warmup-iters", "1", "--sample-tokens", "0"]
    train.main([*flags, "--max-iters", "4"])
    train.main(["--out-dir", str(tmp_path / "run"), "--resume", "--max-iters", "6", "--sample-tokens", "0"])
    figure = visualize.loss_figure(visualize.read_metrics(tmp_path / "run" / "metrics.jsonl"))
    axis, lr_axis = figure.axes
    lines = {line.get_label(): line for line in axis.get_lines() + lr_axis.get_lines()}
    assert list(lines["training loss (smoothed)"].get_xdata()) == list(range(6))
    assert list(lines["val loss (evaluation)"].get_xdata()) == [0, 3, 4, 6]
    assert list(lines["resumed"].get_xdata()) == [4, 4]
    assert len(lines["learning rate"].get_xdata()) == 6
    assert axis.get_title().startswith("small on input.txt, char tokens\n2 layers, 2 heads, d_model 8, context 8")


@pytest.mark.parametrize("bad_row, problem", [
    ({"kind": "train", "iter": 3, "lr": 1e-3}, "has no 'loss'"),
    ({"kind": "train", "iter": 3, "loss": "2.0", "lr": 1e-3}, "has loss = '2.0', expected a number"),
    ({"kind": "train", "iter": 3, "loss": math.inf, "lr": 1e-3}, "has loss = inf, expected a finite number"),
    ({"kind": "eval", "iter": 3, "train_loss": 1.0, "val_loss": math.nan}, "has val_loss = nan, expected a finite"),
    ({"kind": "eval", "iter": 3, "train_loss": 1.0, "val_loss": 1.0, "lr": "high"}, "has lr = 'high', expected a"),
    ({"kind": 7, "iter": 3}, "has kind = 7, expected a string"),
    ({**settings_row(0, False), "config": "big"}, "has config = 'big', expected an object"),
    ({**settings_row(0, False), "resumed": "yes"}, "has resumed = 'yes', expected true or false"),
    ({**settings_row(0, False), "preset": 3}, "has preset = 3, expected a string or null"),
    ({**settings_row(0, False), "parameters": None, "iter": None}, "has iter = None, expected a number"),
])
def test_a_bad_row_of_any_kind_names_its_line(tmp_path, bad_row, problem):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in [*run_rows()[:3], bad_row, *run_rows()[3:5]]))
    with pytest.raises(SystemExit) as raised:
        visualize.read_metrics(path)
    assert str(raised.value).startswith(f"error: {path}: line 4 {problem}")


def test_rows_of_unknown_kinds_are_skipped_and_settings_alone_are_nothing_to_plot(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"kind": "checkpoint", "iter": 5}) + "\n" + json.dumps(run_rows()[1]) + "\n")
    assert visualize.read_metrics(path) == [run_rows()[1]]
    path.write_text(json.dumps(settings_row(0, False)) + "\n")
    with pytest.raises(SystemExit, match="has no rows to plot"):
        visualize.read_metrics(path)


# ----------------------------------------------------------------------------------------------
# Errors


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
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes `from matplotlib.figure import` fail
    with pytest.raises(SystemExit, match=r"matplotlib, which is not installed \(pip install matplotlib\)"):
        visualize.main(["patterns", "--seq-len", "8", "--out", str(tmp_path / "patterns.png")])
    import train
    (tmp_path / "metrics.jsonl").write_text(json.dumps(run_rows()[1]) + "\n")
    with pytest.raises(SystemExit, match=r"matplotlib, which is not installed \(pip install matplotlib\)"):
        train.main(["--plot", str(tmp_path)])

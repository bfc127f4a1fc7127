"""The Python API of a whole job: train.train(model, data, **settings), model.save / TransformerLM.load."""
import json

import numpy as np
import pytest
from conftest import ROOT

import train
from data import SortingTask
from tokenizer import ByteBPETokenizer, CharTokenizer
from transformer_lm import TransformerConfig, TransformerLM

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 30
TINY = dict(max_iters=6, batch_size=4, eval_interval=3, eval_iters=2, warmup_iters=1, log_interval=100)


def tiny_model(tokenizer=None, vocab_size=None, seed=0, **overrides):
    vocab_size = tokenizer.vocab_size if tokenizer else vocab_size
    config = TransformerConfig(vocab_size=vocab_size, d_model=16, n_heads=2, n_layers=1, max_seq_len=16, dropout=0.1,
                               positional="learned", norm_first=True, **overrides)
    model = TransformerLM(config, seed=seed)
    model.tokenizer = tokenizer
    return model


@pytest.mark.parametrize("make_tokenizer", [lambda: CharTokenizer.from_text(TEXT),
                                            lambda: ByteBPETokenizer.train(TEXT, 300), lambda: None])
def test_save_then_load_gives_the_same_model_tokenizer_and_generations(tmp_path, make_tokenizer):
    tokenizer = make_tokenizer()
    model = tiny_model(tokenizer, vocab_size=300)
    model.parameters()["decoder.token_embedding.weight"][:] += 0.5  # not just the initialization
    model.save(tmp_path / "model")
    loaded = TransformerLM.load(tmp_path / "model")
    assert loaded.config == model.config
    for name, value in model.parameters().items():
        np.testing.assert_array_equal(loaded.parameters()[name], value)
    if tokenizer is None:
        assert loaded.tokenizer is None
    else:
        assert type(loaded.tokenizer) is type(tokenizer)
        assert loaded.tokenizer.encode(TEXT[:60]) == tokenizer.encode(TEXT[:60])
    prompt = [1, 2, 3]
    np.testing.assert_array_equal(loaded.generate(prompt, 8, temperature=0.9, seed=3),
                                  model.generate(prompt, 8, temperature=0.9, seed=3))
    # The dropout / sampling generator continues where the saved model's stood.
    np.testing.assert_array_equal(loaded.generate(prompt, 8, temperature=0.9),
                                  model.generate(prompt, 8, temperature=0.9))


def rows_of(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_train_on_a_token_array_returns_the_rows_of_metrics_jsonl(tmp_path):
    tokenizer = CharTokenizer.from_text(TEXT)
    model = tiny_model(tokenizer)
    history = train.train(model, np.array(tokenizer.encode(TEXT)), out_dir=tmp_path / "run", **TINY)
    assert history == rows_of(tmp_path / "run" / "metrics.jsonl")
    assert [row["kind"] for row in history] == ["settings"] + ["eval"] + ["train"] * 3 + ["eval"] + ["train"] * 3 + [
        "eval"]
    assert history[-1]["val_bits_per_byte"] > 0  # the array's tokenizer came with the model
    assert history[-1]["val_loss"] < history[1]["val_loss"]
    assert TransformerLM.load(tmp_path / "run").tokenizer.encode("Speak") == tokenizer.encode("Speak")


def test_train_on_a_text_file_without_out_dir_writes_nothing(tmp_path, monkeypatch):
    (tmp_path / "text.txt").write_text(TEXT)
    monkeypatch.chdir(tmp_path)
    tokenizer = CharTokenizer.from_text(TEXT)
    history = train.train(tiny_model(tokenizer), tmp_path / "text.txt", **TINY)
    assert [row["iter"] for row in history if row["kind"] == "eval"] == [0, 3, 6]
    assert history[0]["data"] == "text.txt"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["text.txt"]


def test_train_on_the_sorting_task(tmp_path):
    task = SortingTask()
    model = tiny_model(vocab_size=task.vocab_size)
    history = train.train(model, task, max_iters=2, eval_iters=1, batch_size=4)
    assert history[0]["preset"] == "sort" and "val_bits_per_byte" not in history[-1]


def test_resuming_through_the_api_continues_exactly(tmp_path):
    tokenizer = CharTokenizer.from_text(TEXT)
    ids = np.array(tokenizer.encode(TEXT))
    settings = {**TINY, "lr_decay_iters": 6}
    train.train(tiny_model(tokenizer, dtype="float64"), ids, out_dir=tmp_path / "straight", **settings)
    train.train(tiny_model(tokenizer, dtype="float64"), ids, out_dir=tmp_path / "resumed", **{**settings,
                                                                                               "max_iters": 3})
    resumed = tiny_model(tokenizer, dtype="float64", seed=9)  # the checkpoint's weights and generators win
    history = train.train(resumed, ids, out_dir=tmp_path / "resumed", resume=True, max_iters=6)
    assert history[0]["resumed"] is True and history[0]["iter"] == 3
    straight = TransformerLM.load(tmp_path / "straight")
    for name, value in straight.parameters().items():
        np.testing.assert_allclose(resumed.parameters()[name], value, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("settings, message", [
    (dict(lr=-1.0), "--lr must be >= 0, got -1.0"),
    (dict(max_iters=0), "--max-iters must be >= 1"),
    (dict(learning_rate=1e-3), "unknown settings ['learning_rate']"),
    (dict(d_model=32), "d_model=32: the model has d_model=16"),
    (dict(preset="nope"), "--preset must be one of"),
])
def test_bad_settings_are_the_same_errors_as_the_flags(settings, message):
    tokenizer = CharTokenizer.from_text(TEXT)
    with pytest.raises(train.TrainingError) as error:
        train.train(tiny_model(tokenizer), np.array(tokenizer.encode(TEXT)), **settings)
    assert message in str(error.value)


@pytest.mark.parametrize("data, message", [
    (np.zeros((4, 4), dtype=int), "a non-empty 1-D array of integers"),
    (np.array([0.5, 1.5]), "a non-empty 1-D array of integers"),
    (np.array([1, -2, 3] * 200), "token ids must be >= 0"),
    (np.array([0, 1, 500] * 200), "the data needs a vocabulary of 501"),
    (np.array([0, 1, 2] * 3), "the token array cannot be split"),
    (np.array([0, 1, 2] * 30), r"the token array \(90 tokens\) is too short for --block-size 16"),
])
def test_bad_token_arrays_are_clear_errors(data, message):
    with pytest.raises(train.TrainingError, match=message):
        train.train(tiny_model(vocab_size=30), data, max_iters=1)


def test_the_readme_script_runs(tmp_path, monkeypatch, capsys):
    readme = (ROOT / "README.md").read_text()
    script = readme.split("### Training from Python")[1].split("```python\n")[1].split("```")[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(script, "README.md", "exec"), {})
    output = capsys.readouterr().out
    assert (tmp_path / "hamlet-model" / "model.npz").is_file() and (tmp_path / "out-hamlet" / "metrics.jsonl").is_file()
    sample = output.split("checkpoint in out-hamlet/checkpoint\n")[1].split("\n", 1)[1]  # after the eval list
    assert sample.startswith("To be") and len(sample) > len("To be") + 20

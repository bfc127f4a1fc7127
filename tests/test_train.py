import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

import train

CORPUS = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 40


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(CORPUS)
    return path


def run(*flags):
    return train.main([str(flag) for flag in flags])


def tiny_run(corpus, out_dir, *flags):
    return run("--data", corpus, "--out-dir", out_dir, "--n-layers", 2, "--n-heads", 2, "--d-model", 16,
               "--block-size", 16, "--batch-size", 4, "--eval-iters", 2, "--warmup-iters", 1, "--sample-tokens", 0,
               *flags)


def arrays(path):
    with np.load(path) as archive:
        return {name: archive[name] for name in archive.files}


def test_resume_continues_exactly(corpus, tmp_path):
    common = ("--dtype", "float64", "--dropout", 0.1, "--lr-decay-iters", 8, "--warmup-iters", 2,
              "--eval-interval", 3, "--seed", 5)
    tiny_run(corpus, tmp_path / "straight", "--max-iters", 8, *common)
    tiny_run(corpus, tmp_path / "resumed", "--max-iters", 4, *common)
    run("--out-dir", tmp_path / "resumed", "--resume", "--max-iters", 8)
    for name in ("model.npz", "optimizer.npz"):
        straight = arrays(tmp_path / "straight" / "checkpoint" / name)
        resumed = arrays(tmp_path / "resumed" / "checkpoint" / name)
        assert straight.keys() == resumed.keys()
        for key, value in straight.items():
            np.testing.assert_allclose(resumed[key], value, rtol=1e-12, atol=1e-12)
    # The weights did move: a resume that restored nothing would differ from a fresh start.
    fresh = arrays(tmp_path / "straight" / "checkpoint" / "model.npz")["decoder.token_embedding.weight"]
    assert json.loads((tmp_path / "resumed" / "checkpoint" / "state.json").read_text())["iteration"] == 8
    assert not np.allclose(fresh, 0.0)


def test_byte_level_bpe_tokenizer_option(corpus, tmp_path, capsys):
    tiny_run(corpus, tmp_path / "run", "--max-iters", 3, "--tokenizer", "bpe", "--bpe-vocab-size", 300,
             "--sample-tokens", 5)
    from checkpoint import load_model, load_tokenizer
    tokenizer = load_tokenizer(tmp_path / "run")
    assert tokenizer.vocab_size == 300 == load_model(tmp_path / "run").config.vocab_size
    assert tokenizer.decode(tokenizer.encode("Speak, speak.")) == "Speak, speak."
    assert "sample:" in capsys.readouterr().out
    run("--out-dir", tmp_path / "run", "--resume", "--max-iters", 5)  # resumes with the saved tokenizer


def test_loss_falls_on_a_tiny_corpus_and_metrics_are_logged(corpus, tmp_path, capsys):
    tiny_run(corpus, tmp_path / "run", "--max-iters", 60, "--eval-interval", 30, "--lr", 3e-3, "--log-interval", 10)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["iter"] for row in rows] == [0, 30, 60]
    assert set(rows[0]) == {"iter", "train_loss", "val_loss", "lr", "ms_per_iter"}
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.5
    output = capsys.readouterr().out
    assert "iter 10: loss" in output and "tokens/s" in output and "eta" in output
    assert "step 60: train loss" in output


def test_the_sorting_task_learns(tmp_path, capsys):
    run("--out-dir", tmp_path / "sort", "--max-iters", 250, "--eval-interval", 250)
    output = capsys.readouterr().out
    accuracy = float(output.split("held-out sorting problems: ")[1].split("%")[0])
    assert accuracy >= 90.0


def test_nan_loss_stops_training_and_keeps_the_last_checkpoint(corpus, tmp_path):
    tiny_run(corpus, tmp_path / "run", "--max-iters", 3)
    before = {path.name: path.read_bytes() for path in (tmp_path / "run" / "checkpoint").iterdir()}
    with pytest.raises(SystemExit, match=r"loss became nan at iteration \d+; stopping. The last good checkpoint"):
        run("--out-dir", tmp_path / "run", "--resume", "--max-iters", 20, "--lr", 1e30, "--grad-clip", 0)
    after = {path.name: path.read_bytes() for path in (tmp_path / "run" / "checkpoint").iterdir()}
    assert after == before


def test_plot_draws_the_loss_curves(corpus, tmp_path):
    image = pytest.importorskip("matplotlib.image", reason="matplotlib is optional: pip install matplotlib")
    tiny_run(corpus, tmp_path / "run", "--max-iters", 4, "--eval-interval", 2)
    run("--plot", tmp_path / "run")
    pixels = image.imread(tmp_path / "run" / "loss.png")
    assert pixels.shape[:2] == (450, 700)
    assert pixels.std() > 0.01  # not blank


@pytest.mark.parametrize("flags,message", [
    (["--data", "no-such-file.txt"], "error: cannot read --data no-such-file.txt"),
    (["--resume", "--out-dir", "no-such-run"], "error: --resume found no readable run in no-such-run"),
    (["--max-iters", "0"], "error: --max-iters must be >= 1"),
    (["--warmup-iters", "2000"], "error: decay_iters must be an integer > warmup_iters=2000"),
    (["--plot", "no-such-run"], "error: cannot read no-such-run/metrics.jsonl"),
])
def test_cli_errors_are_one_clear_line(tmp_path, flags, message):
    completed = subprocess.run([sys.executable, str(ROOT / "train.py"), *flags], cwd=tmp_path,
                               capture_output=True, text=True)
    assert completed.returncode == 1
    assert completed.stderr.strip().splitlines() == [completed.stderr.strip()]
    assert message in completed.stderr


def test_help_lists_every_hyperparameter():
    completed = subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"], capture_output=True, text=True)
    for flag in ("--max-iters", "--batch-size", "--block-size", "--n-layers", "--n-heads", "--d-model", "--dropout",
                 "--lr", "--min-lr", "--warmup-iters", "--weight-decay", "--beta2", "--grad-clip", "--eval-interval",
                 "--eval-iters", "--seed", "--resume", "--preset", "--out-dir", "--plot"):
        assert flag in completed.stdout


def test_gradient_accumulation_equals_one_large_batch():
    from transformer_lm import TransformerConfig, TransformerLM
    model = TransformerLM(TransformerConfig(vocab_size=9, d_model=8, n_heads=2, n_layers=1, max_seq_len=6,
                                            dropout=0.0, dtype="float64"), seed=0)
    rng = np.random.default_rng(1)
    ids, targets = rng.integers(0, 9, (4, 6)), rng.integers(0, 9, (4, 6))

    class HalvesTask:
        """Serves the batch's two halves in turn, as two micro-batches."""
        calls = 0

        def get_batch(self, split, batch_size, rng):
            half = slice(0, 2) if self.calls % 2 == 0 else slice(2, 4)
            self.calls += 1
            return ids[half], targets[half]

    loss, grads = train.accumulate_step(model, HalvesTask(), {"grad_accum_steps": 2, "batch_size": 2}, rng)
    full_loss = model.loss(ids, targets)
    full_grads = model.backward()
    assert loss == pytest.approx(full_loss, rel=1e-12)
    for name, grad in full_grads.items():
        np.testing.assert_allclose(grads[name], grad, rtol=1e-10, atol=1e-14)


def test_adaptive_span_training_logs_and_clamps_the_spans(corpus, tmp_path, capsys):
    tiny_run(corpus, tmp_path / "run", "--max-iters", 6, "--eval-interval", 3, "--adaptive-span", "--max-span", 8,
             "--span-ramp", 4, "--lr", 0.5, "--span-loss-coefficient", 0.0)
    assert "layer 1 spans:" in capsys.readouterr().out
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    spans = np.array(rows[-1]["spans"])
    assert spans.shape == (2, 2)
    # The spans learn (they start at 0), and a large learning rate would push them out of [0, max_span]
    # unless they were clamped after each step.
    assert np.any(spans != np.array(rows[0]["spans"]))
    assert np.all((spans >= 0.0) & (spans <= 8.0))


def test_attention_pattern_flags_reach_the_model(corpus, tmp_path):
    tiny_run(corpus, tmp_path / "run", "--max-iters", 2, "--attention", "sliding", "--window", 4)
    from checkpoint import load_config
    config = load_config(tmp_path / "run")
    assert (config.attention, config.window) == ("sliding", 4)
    with pytest.raises(SystemExit, match="window must be a positive integer"):
        tiny_run(corpus, tmp_path / "bad", "--max-iters", 2, "--attention", "sliding")

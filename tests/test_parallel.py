"""Data-parallel training over MPI (parallel.py): N ranks under mpirun against one process, sharded AdamW (--zero 1),
resumes across rank counts, failures and disagreements between ranks. Each MPI test launches
`mpirun -n 2 --oversubscribe` with a timeout; without mpi4py or mpirun they skip (fail under REQUIRE_ORACLES=1)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import CORPUS, ROOT

import parallel
from checkpoint import read_checkpoint

MPI_TIMEOUT = 120
# A float64 run with dropout off, accumulation, and a clip threshold far below the gradient norm (so clipping acts
# at every step; test_clipping_is_active checks that it matters).
FLAGS = ["--block-size", "16", "--dtype", "float64", "--dropout", "0", "--grad-accum-steps", "2", "--grad-clip",
         "0.05", "--lr", "0.01", "--warmup-iters", "1", "--lr-decay-iters", "6", "--eval-interval", "3",
         "--eval-iters", "2", "--sample-tokens", "0", "--n-layers", "2", "--d-model", "32"]
GLOBAL_BATCH = 8


def mpi_environment():
    environment = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
                   "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for variable in parallel.LAUNCHER_VARIABLES:  # the test process itself is not a rank
        environment.pop(variable, None)
    return environment


@pytest.fixture(scope="module")
def mpirun():
    """The mpirun command (mpi4py and Open MPI's wheel, requirements-mpi.txt), or skip / fail."""
    missing = []
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        missing.append("mpi4py")
    if shutil.which("mpirun") is None:
        missing.append("mpirun")
    if missing:
        message = f"{' and '.join(missing)} not installed (pip install -r requirements-mpi.txt)"
        if os.environ.get("REQUIRE_ORACLES") == "1":
            pytest.fail(message + " and REQUIRE_ORACLES=1 is set")
        pytest.skip(message)
    return ["mpirun", "-n", "2", "--oversubscribe"]


def run(command, cwd):
    return subprocess.run(command, cwd=cwd, env=mpi_environment(), capture_output=True, text=True,
                          timeout=MPI_TIMEOUT)


def train_cli(launcher, out_dir, data, *flags):
    completed = run([*launcher, sys.executable, str(ROOT / "train.py"), "--data", str(data), "--out-dir",
                     str(out_dir), *FLAGS, *map(str, flags)], cwd=out_dir.parent)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed


def results(out_dir):
    """(parameters, losses of every train and eval row of metrics.jsonl, optimizer state) of a finished run."""
    checkpoint = read_checkpoint(out_dir / "checkpoint", optimizer=True)
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [(row["kind"], row["iter"], row.get("loss", row.get("val_loss"))) for row in rows
              if row["kind"] in ("train", "eval")]
    return checkpoint.parameters, losses, checkpoint.optimizer_state


def assert_same_run(expected, actual, tolerance=1e-12):
    (params, losses, optimizer), (params2, losses2, optimizer2) = expected, actual
    assert [row[:2] for row in losses] == [row[:2] for row in losses2]
    np.testing.assert_allclose([row[2] for row in losses2], [row[2] for row in losses], rtol=tolerance, atol=0)
    for name in params:
        np.testing.assert_allclose(params2[name], params[name], rtol=0, atol=tolerance, err_msg=name)
    assert optimizer2["step"] == optimizer["step"]
    for key in optimizer:
        np.testing.assert_allclose(optimizer2[key], optimizer[key], rtol=1e-9, atol=1e-15, err_msg=key)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference: one process, 8 sequences per micro-batch, 6 steps."""
    directory = tmp_path_factory.mktemp("one-process")
    (directory / "corpus.txt").write_text(CORPUS)
    train_cli([], directory / "run", directory / "corpus.txt", "--max-iters", "6", "--batch-size", GLOBAL_BATCH)
    return results(directory / "run")


@pytest.mark.parametrize("zero", ["0", "1"])
def test_two_ranks_reproduce_one_process(mpirun, one_process, tmp_path, zero):
    (tmp_path / "corpus.txt").write_text(CORPUS)
    completed = train_cli(mpirun, tmp_path / "run", tmp_path / "corpus.txt", "--max-iters", "6", "--batch-size",
                          GLOBAL_BATCH // 2, "--zero", zero)
    assert completed.stdout.count("step 6:") == 1  # rank 0 alone prints
    assert_same_run(one_process, results(tmp_path / "run"))


def test_clipping_is_active(one_process, tmp_path):
    """Without the clip the reference run ends elsewhere: the equality above covers the global-norm clip."""
    (tmp_path / "corpus.txt").write_text(CORPUS)
    train_cli([], tmp_path / "run", tmp_path / "corpus.txt", "--max-iters", "6", "--batch-size", GLOBAL_BATCH,
              "--grad-clip", "0")
    params, reference = results(tmp_path / "run")[0], one_process[0]
    assert max(np.abs(params[name] - reference[name]).max() for name in params) > 1e-4


@pytest.mark.parametrize("first, second", [("2", "1"), ("1", "2")])
def test_a_run_resumes_with_another_rank_count(mpirun, one_process, tmp_path, first, second):
    """3 steps on one rank count, 3 more on the other (sharded over 2 ranks): the one-process run, step for step."""
    (tmp_path / "corpus.txt").write_text(CORPUS)
    for ranks, max_iters, resume in ((first, "3", []), (second, "6", ["--resume"])):
        launcher = mpirun if ranks == "2" else []
        train_cli(launcher, tmp_path / "run", tmp_path / "corpus.txt", "--max-iters", max_iters, "--batch-size",
                  GLOBAL_BATCH // int(ranks), "--zero", "1", *resume)
    params, losses, optimizer = results(tmp_path / "run")
    first_rows = {}  # the resumed run logs its evaluation at iteration 3 again
    for row in losses:
        first_rows.setdefault(row[:2], row)
    assert_same_run(one_process, (params, list(first_rows.values()), optimizer))


def test_an_interrupted_rank_stops_every_rank_and_rank_0_saves(mpirun, tmp_path):
    (tmp_path / "corpus.txt").write_text(CORPUS)
    out_dir = tmp_path / "run"
    command = [*mpirun, sys.executable, str(ROOT / "train.py"), "--data", str(tmp_path / "corpus.txt"), "--out-dir",
               str(out_dir), *FLAGS, "--max-iters", "100000", "--batch-size", "2", "--log-interval", "1", "--zero", "1"]
    process = subprocess.Popen(command, cwd=tmp_path, env=mpi_environment(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        for line in process.stdout:
            if line.startswith("iter 2:"):
                break
        ranks = [int(path.parent.name) for path in Path("/proc").glob("*/cmdline")
                 if path.parent.name.isdigit() and rank_of_run(path, out_dir)]
        assert len(ranks) == 2, ranks
        os.kill(max(ranks), signal.SIGINT)  # one rank only, whichever it is
        stdout, stderr = process.communicate(timeout=MPI_TIMEOUT)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    iteration = read_checkpoint(out_dir / "checkpoint", training=True).state["iteration"]
    assert iteration >= 2 and f"interrupted: saved the run at iteration {iteration}" in stderr


def rank_of_run(cmdline, out_dir):
    """Whether /proc/PID/cmdline is a rank (python train.py, not mpirun) of the run in out_dir."""
    try:
        arguments = cmdline.read_bytes().decode().split("\0")
    except OSError:  # the process ended meanwhile
        return False
    return arguments[0] == sys.executable and str(out_dir) in arguments


def rank_script(tmp_path, body):
    """A Python script run by every rank: the corpus as tokens, a float64 model, then `body`."""
    script = tmp_path / "ranks.py"
    script.write_text(textwrap.dedent(f"""\
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        import numpy as np
        import parallel, train
        from transformer_lm import TransformerConfig, TransformerLM
        ranks = parallel.world()
        tokens = np.frombuffer({CORPUS[:4000]!r}.encode(), dtype=np.uint8).astype(np.int64)
        model = TransformerLM(TransformerConfig(vocab_size=256, d_model=16, n_heads=2, n_layers=1, max_seq_len=16,
                                                dropout=0.0, dtype="float64"), seed=0)
        settings = dict(max_iters=40, batch_size=2, eval_interval=100, eval_iters=1, log_interval=100)
        """) + textwrap.dedent(body))
    return script


def test_a_failing_rank_ends_the_job_with_its_message(mpirun, tmp_path):
    script = rank_script(tmp_path, """\
        original = train.Task.get_batch
        calls = []
        def get_batch(task, split, batch_size, rng):
            calls.append(split)
            if ranks.rank == 1 and len(calls) == 5:
                raise RuntimeError("rank one met bad data")
            return original(task, split, batch_size, rng)
        train.Task.get_batch = get_batch
        train.train(model, tokens, **settings)
        """)
    started = time.perf_counter()
    completed = run([*mpirun, sys.executable, str(script)], cwd=tmp_path)
    assert completed.returncode != 0
    output = completed.stdout + completed.stderr
    assert "rank 1 failed" in output and "RuntimeError: rank one met bad data" in output
    assert time.perf_counter() - started < 30  # rank 0, waiting in the all-reduce, was ended too


def test_ranks_that_disagree_refuse_to_start(mpirun, tmp_path):
    script = rank_script(tmp_path, """\
        train.train(model, tokens, **settings, seed=ranks.rank)  # a different batch stream on each rank
        """)
    completed = run([*mpirun, sys.executable, str(script)], cwd=tmp_path)
    assert completed.returncode != 0
    assert "the ranks disagree on the configuration or the data: ranks [1] differ from rank 0" in completed.stderr
    assert "iter 0:" not in completed.stdout  # no step was taken


@pytest.mark.parametrize("zero", [0, 1])
def test_rank_0s_initial_parameters_are_everyones(mpirun, tmp_path, zero):
    script = rank_script(tmp_path, f"""\
        model = TransformerLM(model.config, seed=ranks.rank)  # each rank would start elsewhere
        train.train(model, tokens, **dict(settings, max_iters=2, zero={zero}))
        values = np.concatenate([value.ravel() for value in model.parameters().values()])
        everyone = ranks.comm.allgather(values)
        assert np.array_equal(everyone[0], everyone[1])
        print("rank", ranks.rank, "agrees")
        """)
    completed = run([*mpirun, sys.executable, str(script)], cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert "rank 1 agrees" in completed.stdout


def test_sharded_optimizer_state_halves_per_rank(mpirun, tmp_path):
    script = rank_script(tmp_path, """\
        optimizer = ranks.optimizer(model.parameters(), 1)
        count = model.num_parameters()
        padded = -(-count // 2) * 2
        assert optimizer.state_bytes() == 2 * (padded // 2) * 8, (optimizer.state_bytes(), count)
        print(f"rank {ranks.rank}: {optimizer.state_bytes()} of {2 * count * 8} bytes")
        """)
    completed = run([*mpirun, sys.executable, str(script)], cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert "rank 0:" in completed.stdout and "rank 1:" in completed.stdout


def test_without_mpirun_mpi4py_is_never_imported(tmp_path):
    code = "import sys, parallel; ranks = parallel.world(); print(ranks.size, 'mpi4py' in sys.modules)"
    completed = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=mpi_environment(), capture_output=True,
                               text=True, timeout=60)
    assert completed.stdout.split() == ["1", "False"], completed.stderr


def test_a_job_of_one_rank_is_a_plain_process(monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "1")
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # not needed, so never imported
    monkeypatch.setattr(parallel, "_WORLD", None)
    assert parallel.world().size == 1


def test_under_mpirun_without_mpi4py_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # as if not installed
    monkeypatch.setattr(parallel, "_WORLD", None)
    with pytest.raises(ImportError, match="pip install -r requirements-mpi.txt"):
        parallel.world()

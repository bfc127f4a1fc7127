"""A newcomer's first steps: `pip install .` / `pip install -e .` give a library that imports from any folder, with
console scripts, and the tests find GPT-2's tokenizer files on a fresh clone (or say how to get them)."""
import importlib
import importlib.metadata
import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import conftest
import pytest
from conftest import ROOT

# Run from the checkout only (they need torch or the checkout beside them): not installed.
DEVELOPMENT_TOOLS = {"bench", "gpu_check", "torch_peer"}


def pyproject():
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def root_modules():
    """Every module at the repository root that an install must carry: derived, so a new one cannot be forgotten."""
    return {path.stem for path in ROOT.glob("*.py")} - DEVELOPMENT_TOOLS


def console_scripts():
    return pyproject()["project"]["scripts"]


def test_pyproject_lists_every_module_at_the_root_and_nothing_else():
    listed = pyproject()["tool"]["setuptools"]["py-modules"]
    assert len(listed) == len(set(listed))
    assert set(listed) == root_modules()


def test_every_console_script_calls_a_main_that_takes_argv():
    scripts = console_scripts()
    assert {"npgpt-demo", "npgpt-train", "npgpt-generate", "npgpt-evaluate"} <= set(scripts)
    for name, target in scripts.items():
        module_name, function_name = target.split(":")
        assert module_name in root_modules(), name
        parameters = inspect.signature(getattr(importlib.import_module(module_name), function_name)).parameters
        assert list(parameters) == ["argv"] and parameters["argv"].default is None, name


def bin_directory(venv):
    return venv / ("Scripts" if os.name == "nt" else "bin")


def require_setuptools():
    """Skip without setuptools >= 64 (the build backend pyproject.toml names), or fail under REQUIRE_ORACLES=1: CI
    installs it from requirements-dev.txt. Asked of the package metadata: importing setuptools would patch distutils
    in this test process."""
    try:
        major = int(importlib.metadata.version("setuptools").split(".")[0])
    except importlib.metadata.PackageNotFoundError:
        major = 0
    if major < 64:
        message = "building the wheel offline needs setuptools >= 64 (pip install -r requirements-dev.txt)"
        if os.environ.get("REQUIRE_ORACLES") == "1":
            pytest.fail(message + " and REQUIRE_ORACLES=1 is set")
        pytest.skip(message)


def install(tmp_path, *pip_arguments):
    """A fresh virtual environment with this project installed from a copy of the checkout; returns the venv.

    --system-site-packages lends it NumPy (and setuptools, pip) without a download; --no-build-isolation and
    --no-index keep pip offline. The copy keeps build/ and *.egg-info out of the real checkout."""
    require_setuptools()
    source = tmp_path / "source"
    source.mkdir()
    for path in [*ROOT.glob("*.py"), ROOT / "pyproject.toml", ROOT / "README.md"]:
        shutil.copy(path, source)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    completed = subprocess.run([str(bin_directory(venv) / "python"), "-m", "pip", "install", "--quiet", "--no-deps",
                                "--no-build-isolation", "--no-index", "--disable-pip-version-check",
                                *pip_arguments, str(source)], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    return venv


def run_elsewhere(tmp_path, command):
    """Run a command from a folder outside the checkout, with nothing of the checkout on PYTHONPATH."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    completed = subprocess.run(command, cwd=elsewhere, env=environment, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


# Imports every module, reports where each came from, and runs a small model.
IMPORT_CHECK = """
import importlib, json, sys
import numpy as np
from transformer_lm import TransformerConfig, TransformerLM
config = TransformerConfig(vocab_size=11, d_model=8, n_heads=2, n_layers=1, max_seq_len=4)
logits = TransformerLM(config, seed=0)(np.zeros((1, 4), dtype=np.int64))
files = {name: importlib.import_module(name).__file__ for name in sys.argv[1:]}
print(json.dumps({"shape": list(logits.shape), "files": files}))
"""


@pytest.mark.parametrize("editable", [False, True], ids=["wheel", "editable"])
def test_installed_library_imports_and_runs_from_another_folder(tmp_path, editable):
    venv = install(tmp_path, *(["--editable"] if editable else []))
    modules = sorted(root_modules())
    report = json.loads(run_elsewhere(tmp_path, [str(bin_directory(venv) / "python"), "-c", IMPORT_CHECK, *modules]))
    assert report["shape"] == [1, 4, 11]
    for name, file in report["files"].items():
        # A wheel copies the module into the venv; an editable install points at the source it was installed from.
        expected_folder = venv if not editable else tmp_path / "source"
        assert Path(file).resolve().is_relative_to(expected_folder.resolve()), (name, file)
        assert not Path(file).resolve().is_relative_to(ROOT), (name, file)


def test_development_tools_are_not_installed(tmp_path):
    venv = install(tmp_path)
    for name in DEVELOPMENT_TOOLS:
        completed = subprocess.run([str(bin_directory(venv) / "python"), "-c", f"import {name}"],
                                   cwd=tmp_path, capture_output=True, text=True)
        assert completed.returncode != 0 and "ModuleNotFoundError" in completed.stderr
    # The console scripts are there, and the command-line tools answer under their installed names.
    for name in console_scripts():
        assert (bin_directory(venv) / name).exists(), name
    for name in ("npgpt-demo", "npgpt-train"):
        usage = run_elsewhere(tmp_path, [str(bin_directory(venv) / name), "--help"])
        assert usage.startswith(f"usage: {name}"), usage[:200]
    assert "parameters:" in run_elsewhere(tmp_path, [str(bin_directory(venv) / "npgpt-demo"), "--n-layers", "1"])


# ---------------------------------------------------------------------------------------------------------------
# GPT-2's tokenizer files: ../shared, or a directory named by NPGPT_GPT2_TOKENIZER_DIR


@pytest.fixture
def no_shared(tmp_path, monkeypatch):
    """As on a fresh clone: no ../shared, no variable set, not under CI."""
    monkeypatch.setattr(conftest, "SHARED", tmp_path / "no-shared")
    monkeypatch.delenv(conftest.GPT2_TOKENIZER_VARIABLE, raising=False)
    monkeypatch.delenv("REQUIRE_ORACLES", raising=False)


def test_missing_tokenizer_files_skip_with_the_command_that_gets_them(no_shared):
    with pytest.raises(pytest.skip.Exception) as skipped:
        conftest.require_gpt2_tokenizer()
    reason = str(skipped.value)
    assert "GPT2TokenizerFast" in reason and "save_pretrained" in reason
    assert conftest.GPT2_TOKENIZER_VARIABLE in reason


def test_missing_tokenizer_files_fail_under_ci(no_shared, monkeypatch):
    monkeypatch.setenv("REQUIRE_ORACLES", "1")
    with pytest.raises(pytest.fail.Exception, match="REQUIRE_ORACLES=1"):
        conftest.require_gpt2_tokenizer()


def test_a_variable_naming_a_folder_without_the_files_fails(no_shared, monkeypatch, tmp_path):
    monkeypatch.setenv(conftest.GPT2_TOKENIZER_VARIABLE, str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match=conftest.GPT2_TOKENIZER_VARIABLE):
        conftest.require_gpt2_tokenizer()


def test_the_variable_names_a_folder_with_vocab_and_merges(no_shared, monkeypatch, tmp_path):
    (tmp_path / "vocab.json").write_text("{}", encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    monkeypatch.setenv(conftest.GPT2_TOKENIZER_VARIABLE, str(tmp_path))
    assert conftest.require_gpt2_tokenizer() == tmp_path


@pytest.mark.parametrize("merge_form", ["strings", "pairs"])
def test_a_tokenizer_json_alone_gives_the_two_files(no_shared, monkeypatch, tmp_path, merge_form):
    # A miniature tokenizer.json in the layout transformers saves: merges as "a b" strings (tokenizers < 0.20) or
    # ["a", "b"] pairs, the end-of-text token among the added tokens.
    merges = [["Ġ", "t"], ["h", "e"]]
    model = {"type": "BPE", "vocab": {"Ġ": 0, "t": 1, "h": 2, "e": 3, "Ġt": 4, "he": 5},
             "merges": merges if merge_form == "pairs" else [" ".join(pair) for pair in merges]}
    added = [{"id": 6, "content": "<|endoftext|>", "special": True}]
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": model, "added_tokens": added}), encoding="utf-8")
    monkeypatch.setenv(conftest.GPT2_TOKENIZER_VARIABLE, str(tmp_path))
    directory = conftest.require_gpt2_tokenizer()
    assert directory != tmp_path and not (tmp_path / "vocab.json").exists()  # nothing written beside the user's file
    assert json.loads((directory / "vocab.json").read_text(encoding="utf-8")) == {**model["vocab"],
                                                                                   "<|endoftext|>": 6}
    assert (directory / "merges.txt").read_text(encoding="utf-8") == "#version: 0.2\nĠ t\nh e\n"

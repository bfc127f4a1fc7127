"""The one array module (device.py): the switch, its errors, and the fake device of strict_device.py on which every
compute path must give the CPU's results bit for bit while never handing a NumPy array to a device array. The GPU
script's dry run runs here too, and its GPU tests where CuPy sees a GPU."""
import dataclasses
import json
import subprocess
import sys
import types

import numpy as np
import pytest
from conftest import ROOT
from strict_device import HostArrayError, StrictDeviceArray, use_strict_device

import attention
import decoder
import device
import generation
import gpu_check
import module
import positional_encoding
import sparse_attention
import train
from checkpoint import load_training_state, save_checkpoint
from optim import AdamW
from tokenizer import CharTokenizer
from transformer_lm import TransformerLM

SIZE = gpu_check.SIZES["dry"]
CONFIGS = gpu_check.test_configs(SIZE)


@pytest.fixture
def strict(monkeypatch):
    use_strict_device(monkeypatch)
    StrictDeviceArray.host_reads = 0


def model_on(device_name, name="gpt2", **changes):
    config = dataclasses.replace(CONFIGS[name], **changes)
    return gpu_check.prepare(name, TransformerLM(config, seed=0), SIZE).to(device_name)


def batch(seed=1, vocab=SIZE["vocab"]):
    rng = np.random.default_rng(seed)
    return rng.integers(0, vocab, (SIZE["batch"], SIZE["seq"])), rng.integers(0, vocab, (SIZE["batch"], SIZE["seq"]))


def assert_same(ours, reference):
    """Bit for bit, the device array copied back."""
    host = device.to_host(ours)
    assert type(host) is np.ndarray and host.dtype == reference.dtype
    np.testing.assert_array_equal(host, reference)


# ------------------------------------------------------------------------------------------------ the switch

def test_cpu_is_numpy_and_costs_nothing():
    x = np.zeros(3)
    assert device.array_module(x) is np and device.device_module("cpu") is np
    assert device.to_device(x, "cpu") is x and device.to_host(x) is x
    model = TransformerLM(CONFIGS["gpt2"], seed=0)
    assert model.device == "cpu" and model.to("cpu") is model


def test_unknown_device_names_the_choices():
    with pytest.raises(ValueError, match="device must be one of 'cpu', 'cuda', got 'gpu'"):
        TransformerLM(CONFIGS["gpt2"]).to("gpu")


def test_cuda_without_cupy_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy raises ImportError, as where it is not installed
    with pytest.raises(device.DeviceError, match=r"needs CuPy.*pip install -r requirements-gpu.txt"):
        TransformerLM(CONFIGS["gpt2"]).to("cuda")


def test_cuda_without_a_gpu_says_so(monkeypatch):
    class CUDARuntimeError(RuntimeError):
        pass

    def no_driver():
        raise CUDARuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    runtime = types.SimpleNamespace(CUDARuntimeError=CUDARuntimeError, getDeviceCount=no_driver)
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=runtime)))
    with pytest.raises(device.DeviceError, match="CuPy is installed but sees no GPU .*no CUDA-capable device"):
        device.require_cupy()


def test_the_cpu_path_never_imports_cupy(tmp_path):
    """A stand-in cupy package that records being imported: a CPU training step must leave it alone."""
    (tmp_path / "cupy").mkdir()
    (tmp_path / "cupy" / "__init__.py").write_text("raise SystemExit('cupy was imported on the CPU path')\n")
    script = ("import numpy as np, sys\n"
              "from transformer_lm import TransformerLM, TransformerConfig\n"
              "from optim import AdamW\n"
              "model = TransformerLM(TransformerConfig(vocab_size=7, d_model=8, n_heads=2, n_layers=1), seed=0)\n"
              "optimizer = AdamW(model.parameters())\n"
              "ids = np.arange(8).reshape(2, 4) % 7\n"
              "model.loss(ids, ids); optimizer.step(model.backward()); model.generate(ids, 2)\n"
              "assert 'cupy' not in sys.modules\n")
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": ""}
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT)
    assert completed.returncode == 0, completed.stderr
    probe = subprocess.run([sys.executable, "-c", "import cupy"], capture_output=True, text=True, env=env)
    assert "cupy was imported" in probe.stderr  # the stand-in would have told


def test_train_refuses_cuda_without_cupy_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(SystemExit, match=r"^error: device 'cuda' needs CuPy.*requirements-gpu.txt"):
        train.main(["--max-iters", "1", "--out-dir", str(tmp_path / "out"), "--device", "cuda"])


def test_generate_refuses_cuda_without_cupy_in_one_line(monkeypatch, tmp_path):
    import generate
    monkeypatch.setitem(sys.modules, "cupy", None)
    tokenizer = CharTokenizer.from_text("hello world")
    save_checkpoint(tmp_path / "ckpt", model_on("cpu", vocab_size=tokenizer.vocab_size), tokenizer=tokenizer)
    with pytest.raises(SystemExit, match=r"^error: device 'cuda' needs CuPy.*requirements-gpu.txt"):
        generate.main(["--checkpoint", str(tmp_path / "ckpt"), "--device", "cuda"])


# ------------------------------------------------------------------------------ the fake device: same results

@pytest.mark.parametrize("name", CONFIGS)
def test_forward_loss_and_gradients_on_the_device_equal_the_cpu_bit_for_bit(strict, name):
    cpu, ours = model_on("cpu", name), model_on("strict", name)
    ids, targets = batch()
    logits = ours.forward(ids)
    assert isinstance(logits, StrictDeviceArray)
    assert_same(logits, cpu.forward(ids))
    assert ours.loss(ids, targets) == cpu.loss(ids, targets)
    cpu_grads, grads = cpu.backward(), ours.backward()
    assert grads.keys() == cpu_grads.keys()
    for parameter, grad in grads.items():
        assert_same(grad, cpu_grads[parameter])


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_on_the_device_equals_the_cpu_bit_for_bit(strict, precision):
    """The operand roundings (precision.py) use the device's own array module: bfloat16 from the bits, no host type."""
    cpu, ours = model_on("cpu", "modern", precision=precision), model_on("strict", "modern", precision=precision)
    ids, targets = batch()
    assert ours.loss(ids, targets) == cpu.loss(ids, targets)
    cpu_grads, grads = cpu.backward(), ours.backward()
    for parameter, grad in grads.items():
        assert_same(grad, cpu_grads[parameter])


def train_steps(model, steps=3):
    optimizer = AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    losses = []
    for step in range(steps):
        losses.append(model.loss(*batch(seed=step)))
        optimizer.step(model.backward())
        model.after_step()
    return losses, optimizer


@pytest.mark.parametrize("name", ["gpt2", "modern", "adaptive_span"])
def test_adamw_steps_on_the_device_equal_the_cpu(strict, name):
    cpu, ours = model_on("cpu", name), model_on("strict", name)
    assert train_steps(ours)[0] == train_steps(cpu)[0]
    for parameter, value in ours.parameters().items():
        assert_same(value, cpu.parameters()[parameter])


@pytest.mark.parametrize("name", ["gpt2", "modern", "sliding", "fixed"])
def test_generation_with_kv_cache_and_left_padding_equals_the_cpu(strict, name):
    cpu, ours = model_on("cpu", name).eval(), model_on("strict", name).eval()
    prompts = [[1, 2, 3, 4, 5], [6], [7, 8, 9]]
    assert ours.generate(prompts, 6, seed=0) == cpu.generate(prompts, 6, seed=0)
    greedy = np.array([[3, 1, 4, 1]])
    assert_same(ours.generate(greedy, 5, temperature=0), generation.greedy_without_cache(cpu, greedy, 5))


def test_dropout_on_the_device_draws_device_masks_from_one_seed(strict):
    first, second = model_on("strict", dropout=0.3), model_on("strict", dropout=0.3)
    cpu_rng_after_init = model_on("cpu", dropout=0.3).rng.bit_generator.state
    assert train_steps(first, 2)[0] == train_steps(second, 2)[0]  # seeded by the model's generator: repeatable
    assert isinstance(first.decoder.dropout.rng.random(2), StrictDeviceArray)
    assert first.rng.bit_generator.state != cpu_rng_after_init    # one draw from it seeded the device's
    assert first.to("cpu").decoder.dropout.rng is first.rng       # back on the CPU, masks from the model's own


def test_tiled_attention_with_dropout_runs_on_the_device(strict):
    ours = model_on("strict", "tiled", dropout=0.2)
    losses, _ = train_steps(ours, 2)
    assert all(np.isfinite(losses))


def test_a_training_step_reads_back_only_its_loss(strict):
    """No hidden device-to-host copies: loss, backward and AdamW read one number (the loss)."""
    model = model_on("strict")
    optimizer = AdamW(model.parameters())
    ids, targets = batch()
    StrictDeviceArray.host_reads = 0
    model.loss(ids, targets)
    optimizer.step(model.backward())
    assert StrictDeviceArray.host_reads == 1


# ----------------------------------------------------------------------------------- the check bites

def test_a_numpy_array_meeting_a_device_array_is_refused(strict):
    on_device = device.to_device(np.ones((2, 3), np.float32), "strict")
    with pytest.raises(HostArrayError, match=r"np.add mixes a NumPy array of shape \(2, 3\)"):
        on_device + np.zeros((2, 3), np.float32)
    with pytest.raises(HostArrayError, match="np.concatenate"):
        np.concatenate([on_device, np.zeros((2, 3), np.float32)])
    with pytest.raises(HostArrayError, match="indexing"):
        on_device[np.array([0, 1])]
    with pytest.raises(HostArrayError, match="np.add.at does not reach device arrays"):
        np.add.at(on_device, device.to_device(np.array([0]), "strict"), 1.0)
    on_device *= 2.0  # scalars are fine, as on CuPy
    assert_same(on_device, np.full((2, 3), 2.0, np.float32))


@pytest.mark.parametrize("compute_module, name", [
    (module, "gpt2"), (attention, "gpt2"), (attention, "tiled"), (sparse_attention, "fixed"),
    (positional_encoding, "modern"), (decoder, "gpt2"), (generation, "sliding")])
def test_each_array_module_call_site_is_needed(strict, monkeypatch, compute_module, name):
    """As if a compute module called NumPy directly where it asks the array module: the fake device catches it."""
    workload(model_on("strict", name))  # runs as it is
    monkeypatch.setattr(compute_module, "array_module", lambda x: np)
    with pytest.raises(HostArrayError):
        workload(model_on("strict", name))


def workload(model):
    """Training and generation: every compute path a config takes."""
    model.loss(*batch())
    model.backward()
    model.generate([[1, 2, 3], [4]], 3)


# ---------------------------------------------------------------------------------- files from a device

def test_checkpoints_and_exports_from_a_device_model(strict, tmp_path):
    cpu, ours = model_on("cpu"), model_on("strict")
    ours.save(tmp_path / "ckpt")
    ours.save_pretrained(tmp_path / "hf")
    for loaded in (TransformerLM.load(tmp_path / "ckpt"), TransformerLM.from_pretrained(tmp_path / "hf")):
        moved = loaded.to("strict")
        for parameter, value in moved.parameters().items():
            assert isinstance(value, StrictDeviceArray)
            assert_same(value, cpu.parameters()[parameter])


def test_a_run_saved_on_the_device_resumes_there(strict, tmp_path):
    ours = model_on("strict")
    _, optimizer = train_steps(ours, 2)
    save_checkpoint(tmp_path / "ckpt", ours, optimizer, state={"iteration": 2})
    resumed = model_on("strict")
    resumed_optimizer = AdamW(resumed.parameters(), lr=1e-2, weight_decay=0.1)
    assert load_training_state(tmp_path / "ckpt", resumed, resumed_optimizer)["iteration"] == 2
    for parameter, value in resumed.parameters().items():
        assert_same(value, device.to_host(ours.parameters()[parameter]))
        assert_same(resumed_optimizer.exp_avg[parameter], device.to_host(optimizer.exp_avg[parameter]))


# ------------------------------------------------------------------------------------------ the GPU script

def test_the_gpu_script_runs_through_on_the_cpu(tmp_path):
    out = tmp_path / "results.json"
    assert gpu_check.main(["--dry-run", "--out", str(out), "--data", str(tmp_path / "absent.txt")]) == 0
    results = json.loads(out.read_text())
    assert results["dry_run"] and all(result["passed"] for result in results["tests"].values())
    assert {"shakespeare_timings", "gpt2_small", "shakespeare_run"} <= results.keys()
    for part in ("shakespeare_timings", "gpt2_small"):
        assert "error" not in json.dumps(results[part])


def test_the_gpu_tests_on_a_gpu():
    try:
        device.require_cupy()
    except device.DeviceError as error:
        pytest.skip(str(error))
    results = gpu_check.run_tests("cuda", gpu_check.SIZES["gpu"])
    assert not [name for name, result in results.items() if not result["passed"]], results


def test_bench_on_cuda_without_cupy_is_one_clear_line(monkeypatch):
    import bench
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(SystemExit, match=r"^error: device 'cuda' needs CuPy"):
        bench.main(["--device", "cuda"])

import json

import numpy as np
import pytest

from checkpoint import CheckpointError, load_tokenizer, load_training_state, save_checkpoint, seal
from optim import AdamW
from tokenizer import ByteBPETokenizer, CharTokenizer
from transformer_lm import TransformerConfig, TransformerLM


def make_model(seed=0, **overrides):
    config = dict(vocab_size=17, d_model=8, n_heads=2, n_layers=2, max_seq_len=12, dtype="float64")
    return TransformerLM(TransformerConfig(**{**config, **overrides}), seed=seed)


@pytest.mark.parametrize("overrides", [{}, dict(norm_first=True, positional="learned", tie_weights=False),
                                       dict(norm="rmsnorm", activation="swiglu", bias=False, norm_first=True,
                                            tie_weights=False, dtype="float32")])
def test_save_then_load_gives_identical_logits(tmp_path, overrides):
    model = make_model(**overrides)
    ids = np.random.default_rng(0).integers(0, 17, (2, 9))
    save_checkpoint(tmp_path / "ckpt", model, tokenizer=CharTokenizer.from_text("abcdefghijklmnopq"))
    loaded = TransformerLM.load(tmp_path / "ckpt")
    assert loaded.config == model.config
    np.testing.assert_array_equal(loaded.eval()(ids), model.eval()(ids))
    assert load_tokenizer(tmp_path / "ckpt").decode([0, 16]) == "aq"


def test_byte_bpe_tokenizer_travels_with_the_checkpoint(tmp_path):
    tokenizer = ByteBPETokenizer.train("the cat sat on the mat " * 20, 262)
    save_checkpoint(tmp_path / "ckpt", make_model(), tokenizer=tokenizer)
    loaded = load_tokenizer(tmp_path / "ckpt")
    assert loaded.encode("the mat sat") == tokenizer.encode("the mat sat")


def test_optimizer_and_random_state_round_trip(tmp_path):
    model = make_model(dropout=0.2)
    optimizer = AdamW(model.parameters(), lr=1e-2)
    ids = np.random.default_rng(1).integers(0, 17, (2, 6))
    model.loss(ids, ids)
    optimizer.step(model.backward())
    save_checkpoint(tmp_path / "ckpt", model, optimizer, state={"iteration": 1})
    expected_next = model.rng.random()

    restored = make_model(seed=99, dropout=0.2)
    restored_optimizer = AdamW(restored.parameters(), lr=1e-2)
    state = load_training_state(tmp_path / "ckpt", restored, restored_optimizer)
    assert state == {"iteration": 1}
    assert restored.rng.random() == expected_next
    assert restored_optimizer.step_count == 1
    for name, value in optimizer.exp_avg_sq.items():
        np.testing.assert_array_equal(restored_optimizer.exp_avg_sq[name], value)


def test_saving_replaces_a_previous_checkpoint_and_leaves_no_staging_behind(tmp_path):
    save_checkpoint(tmp_path / "ckpt", make_model(seed=1))
    save_checkpoint(tmp_path / "ckpt", make_model(seed=2))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ckpt"]
    np.testing.assert_array_equal(TransformerLM.load(tmp_path / "ckpt").parameters()["decoder.token_embedding.weight"],
                                  make_model(seed=2).parameters()["decoder.token_embedding.weight"])


def test_a_crash_between_the_two_renames_still_leaves_the_previous_checkpoint(tmp_path):
    save_checkpoint(tmp_path / "ckpt", make_model(seed=3))
    # The state a crash right after `ckpt -> ckpt.previous` would leave, plus a half-written staging dir.
    (tmp_path / "ckpt").rename(tmp_path / "ckpt.previous")
    (tmp_path / "ckpt.incoming").mkdir()
    (tmp_path / "ckpt.incoming" / "model.npz").write_bytes(b"PK\x03\x04 half")
    loaded = TransformerLM.load(tmp_path / "ckpt")
    np.testing.assert_array_equal(loaded.parameters()["decoder.token_embedding.weight"],
                                  make_model(seed=3).parameters()["decoder.token_embedding.weight"])


def test_a_training_out_dir_resolves_to_its_checkpoint(tmp_path):
    save_checkpoint(tmp_path / "run" / "checkpoint", make_model())
    assert TransformerLM.load(tmp_path / "run").config == make_model().config


def corrupt_truncated_weights(directory):
    data = (directory / "model.npz").read_bytes()
    (directory / "model.npz").write_bytes(data[: len(data) // 2])


def corrupt_garbled_weights(directory):
    data = bytearray((directory / "model.npz").read_bytes())
    data[40:400] = bytes(360)
    (directory / "model.npz").write_bytes(bytes(data))


def corrupt_config_json(directory):
    (directory / "config.json").write_text('{"vocab_size": 17, ')


def change_config_shape(directory):
    config = json.loads((directory / "config.json").read_text())
    config["d_model"] = 12
    (directory / "config.json").write_text(json.dumps(config))


def unknown_config_field(directory):
    config = json.loads((directory / "config.json").read_text())
    config["n_experts"] = 8
    (directory / "config.json").write_text(json.dumps(config))


def drop_a_tensor(directory):
    with np.load(directory / "model.npz") as archive:
        arrays = {name: archive[name] for name in archive.files if not name.endswith("norm2.bias")}
    np.savez(directory / "model.npz", **arrays)


def remove_weights(directory):
    (directory / "model.npz").unlink()


def pickled_weights(directory):
    np.save(directory / "model.npz", np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    (directory / "model.npz.npy").rename(directory / "model.npz")


def bad_config_value(directory):
    config = json.loads((directory / "config.json").read_text())
    config["dropout"] = 2.0
    (directory / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("damage,message", [
    (corrupt_truncated_weights, "model.npz is truncated or corrupt"),
    (corrupt_garbled_weights, "model.npz is truncated or corrupt"),
    (corrupt_config_json, "config.json is not valid JSON"),
    (change_config_shape, r"tensor '.*' has shape .* the config needs"),
    (unknown_config_field, r"unknown fields \['n_experts'\]"),
    (drop_a_tensor, r"missing tensors \['decoder.blocks.0.norm2.bias'"),
    (remove_weights, "model.npz is missing"),
    (pickled_weights, "model.npz is truncated or corrupt"),
    (bad_config_value, "dropout must be in"),
])
def test_damaged_checkpoints_raise_clear_errors(tmp_path, damage, message):
    save_checkpoint(tmp_path / "ckpt", make_model())
    damage(tmp_path / "ckpt")
    if damage is not remove_weights:
        # Crafted rather than damaged: the manifest agrees with the files (else its checksums catch it first,
        # see test_hostile_checkpoint.py), so the content checks are what must catch it.
        seal(tmp_path / "ckpt", 2)
    with pytest.raises(CheckpointError, match=message):
        TransformerLM.load(tmp_path / "ckpt")


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        TransformerLM.load(tmp_path / "nowhere")


def test_mismatched_optimizer_state_names_the_tensor(tmp_path):
    model = make_model()
    save_checkpoint(tmp_path / "ckpt", model, AdamW(model.parameters()))
    other = make_model(tie_weights=False)
    with pytest.raises(CheckpointError, match=r"missing tensors \['lm_head.weight'\]"):
        load_training_state(tmp_path / "ckpt", other, AdamW(other.parameters()))

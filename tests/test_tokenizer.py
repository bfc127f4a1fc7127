"""Tests for tokenizer.py: the character tokenizer, BPE training, and parity with GPT-2 (tiktoken)."""
import json
import os
import random
import re
import shutil
import sys
import unicodedata
from collections import Counter

import numpy as np
import pytest
from conftest import require_gpt2_tokenizer, require_oracle
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenizer import (
    ByteBPETokenizer,
    CharTokenizer,
    gpt2_byte_to_char,
    gpt2_split_regex,
    load_tokenizer,
    start_ids,
)

# Written out here rather than imported, so the oracle does not share a typo with the code under test.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# Code points that Python's unicodedata has not assigned may be letters in tiktoken's newer Unicode
# tables (see the module docstring), so parity properties draw only assigned characters.
ASSIGNED_CHARACTERS = st.characters(exclude_categories=("Cs", "Cn"))


# ----------------------------------------------------------------------------------------------
# CharTokenizer


def test_char_vocabulary_is_the_sorted_distinct_characters():
    tokenizer = CharTokenizer.from_text("hello world")
    assert tokenizer.chars == [" ", "d", "e", "h", "l", "o", "r", "w"]
    assert tokenizer.vocab_size == 8
    assert tokenizer.encode("hello") == [3, 2, 4, 4, 5]
    assert tokenizer.decode([7, 5, 6, 4, 1]) == "world"


def test_char_unknown_character_error_names_character_and_position():
    tokenizer = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match=r"'z' at position 2"):
        tokenizer.encode("abzc")


def test_char_unknown_token_maps_unseen_characters():
    tokenizer = CharTokenizer.from_text("cab", unknown_token="?")
    assert tokenizer.chars == ["?", "a", "b", "c"]
    assert tokenizer.encode("abz!c") == [1, 2, 0, 0, 3]
    with pytest.raises(ValueError, match="single character"):
        CharTokenizer.from_text("abc", unknown_token="<unk>")


@pytest.mark.parametrize("bad_id", [3, -1, 10**9])
def test_char_decode_rejects_ids_outside_the_vocabulary(bad_id):
    tokenizer = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match=str(bad_id)):
        tokenizer.decode([0, bad_id])


def test_char_decode_accepts_numpy_ids():
    tokenizer = CharTokenizer.from_text("abc")
    assert tokenizer.decode(np.array([2, 0, 1], dtype=np.int64)) == "cab"


def test_char_save_load_and_dict_round_trip(tmp_path):
    tokenizer = CharTokenizer.from_text("To be, or not to be: \u00e9\U0001f600\n", unknown_token="\u2047")
    tokenizer.save(tmp_path / "new")  # the directory is created
    assert sorted(os.listdir(tmp_path / "new")) == ["tokenizer.json"]  # no temporary file left behind
    for restored in (CharTokenizer.load(tmp_path / "new"), load_tokenizer(tmp_path / "new"),
                     CharTokenizer.from_dict(json.loads(json.dumps(tokenizer.to_dict())))):
        assert isinstance(restored, CharTokenizer)
        assert restored.chars == tokenizer.chars
        assert restored.unknown_token == tokenizer.unknown_token
        assert restored.encode("not \U0001f600 x") == tokenizer.encode("not \U0001f600 x")


def test_char_tokenizer_json_of_old_checkpoints_still_loads(tmp_path):
    # What CharTokenizer.save(file) wrote before save took a directory, as checkpoints hold it.
    (tmp_path / "tokenizer.json").write_text('{"type": "char", "chars": ["\\n", " ", "a", "b"], '
                                             '"unknown_token": null}', encoding="utf-8")
    for restored in (CharTokenizer.load(tmp_path), load_tokenizer(tmp_path)):
        assert restored.chars == ["\n", " ", "a", "b"] and restored.encode("ba \n") == [3, 2, 1, 0]


def test_char_corrupt_files_and_dicts_are_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer file not found: .*missing"):
        CharTokenizer.load(tmp_path / "missing")
    (tmp_path / "tokenizer.json").write_text("{not json", encoding="utf-8")
    for load in (CharTokenizer.load, load_tokenizer):
        with pytest.raises(ValueError, match="tokenizer.json: not valid JSON"):
            load(tmp_path)
    with pytest.raises(ValueError, match="distinct"):
        CharTokenizer.from_dict({"type": "char", "chars": ["a", "a"], "unknown_token": None})
    with pytest.raises(ValueError, match="'type': 'char'"):
        CharTokenizer.from_dict({"chars": ["a"]})


@settings(max_examples=100, deadline=None)
@given(st.text(), st.text())
def test_char_round_trip_property(text, extra_alphabet):
    tokenizer = CharTokenizer.from_text(text + extra_alphabet + "a")
    ids = tokenizer.encode(text)
    assert all(0 <= token_id < tokenizer.vocab_size for token_id in ids)
    assert tokenizer.decode(ids) == text


# ----------------------------------------------------------------------------------------------
# GPT-2 byte table and pre-tokenization (hand-derived expectations)


def test_byte_table_is_a_printable_bijection():
    table = gpt2_byte_to_char()
    assert len(set(table)) == 256
    assert all(char.isprintable() and not char.isspace() for char in table)
    assert table[ord("A")] == "A" and table[ord("~")] == "~" and table[0xE9] == "\u00e9"
    # The 68 stand-ins start at U+0100 in byte order: bytes 0..32 come first, so b" " gets U+0120.
    assert table[0] == "\u0100" and table[ord("\n")] == "\u010a" and table[ord(" ")] == "\u0120"


@pytest.mark.parametrize(
    ("text", "expected_words"),
    [
        ("I'LL don't  stop", ["I", "'", "LL", " don", "'t", " ", " stop"]),  # contractions are lowercase only
        ("x\u00b2 \u00bd \u216b 42", ["x", "\u00b2", " \u00bd", " \u216b", " 42"]),  # No and Nl count as numbers
        ("a   b  ", ["a", "  ", " b", "  "]),  # a space run leaves its last space to the next word
        ("a\x1c\x1cb", ["a", "\x1c\x1c", "b"]),  # U+001C is not White_Space, though str.isspace() says so
        ("caf\u00e9 na\u0308ive", ["caf\u00e9", " na", "\u0308", "ive"]),  # a combining mark is not a letter
    ],
)
def test_pre_tokenization_examples(text, expected_words):
    assert gpt2_split_regex().findall(text) == expected_words


# ----------------------------------------------------------------------------------------------
# BPE training


def reference_train(text, n_merges):
    """Textbook BPE training for comparison: recount every pair of every word after each merge."""
    word_counts = Counter(gpt2_split_regex().findall(text))
    words = {word: list(word.encode("utf-8")) for word in word_counts}
    token_ids = {bytes([byte]): byte for byte in range(256)}
    id_to_bytes = {byte: bytes([byte]) for byte in range(256)}
    merges = []
    for _ in range(n_merges):
        pair_counts = Counter()
        for word, ids in words.items():
            for pair in zip(ids, ids[1:]):
                pair_counts[pair] += word_counts[word]
        best = min(pair_counts, key=lambda pair: (-pair_counts[pair], pair))
        left, right = id_to_bytes[best[0]], id_to_bytes[best[1]]
        new_id = token_ids.setdefault(left + right, len(token_ids))
        id_to_bytes[new_id] = left + right
        merges.append((left, right))
        for word, ids in words.items():
            merged, i = [], 0
            while i < len(ids):
                if ids[i : i + 2] == list(best):
                    merged.append(new_id)
                    i += 2
                else:
                    merged.append(ids[i])
                    i += 1
            words[word] = merged
    return merges


def synthetic_text(n_words=3000, seed=0):
    """Words over a tiny alphabet: many equal pair counts, so tie-breaking is exercised."""
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcde") for _ in range(rng.randint(1, 7))) for _ in range(n_words)]
    separators = [rng.choice([" ", " ", " ", ", ", ".\n", "  "]) for _ in range(n_words)]
    return "".join(word + separator for word, separator in zip(words, separators))


@pytest.fixture(scope="module")
def trained():
    return ByteBPETokenizer.train(synthetic_text(), vocab_size=400)


def test_train_hand_checked_merges():
    # "aaabdaaabac" is one pre-tokenized word. Pair counts: aa 4, ab 2, bd 1, da 1, ba 1, ac 1, so
    # the first merge is aa (id 256) -> [aa,a,b,d,aa,a,b,a,c]. Now (aa,a) and (a,b) both occur twice;
    # the tie goes to the lower ids, (97, 98) = ab (id 257) -> [aa,ab,d,aa,ab,a,c]; then aa+ab (258).
    tokenizer = ByteBPETokenizer.train("aaabdaaabac", vocab_size=259, special_tokens=())
    assert tokenizer.merges == [(b"a", b"a"), (b"a", b"b"), (b"aa", b"ab")]
    assert tokenizer.vocab_size == 259
    assert tokenizer.encode("aaabdaaabac") == [258, ord("d"), 258, ord("a"), ord("c")]
    assert tokenizer.encode("aaa") == [256, ord("a")]  # merges apply left to right


def test_train_matches_reference_implementation(trained):
    assert trained.merges == reference_train(synthetic_text(), n_merges=399 - 256)


def test_train_reaches_vocab_size_with_special_tokens_last(trained):
    assert trained.vocab_size == 400
    assert trained.eot_token == 399
    assert trained.special_tokens == {"<|endoftext|>": 399}
    tokenizer = ByteBPETokenizer.train(synthetic_text(300), vocab_size=270, special_tokens=("<|a|>", "<|b|>"))
    assert tokenizer.special_tokens == {"<|a|>": 268, "<|b|>": 269}
    assert tokenizer.eot_token is None


def test_train_never_merges_across_words():
    # Every pre-tokenized word of "a.a.a.a." is a single character, so there is no pair to merge.
    with pytest.raises(ValueError, match="too small"):
        ByteBPETokenizer.train("a.a.a.a.", vocab_size=257, special_tokens=())


def test_train_cuts_special_tokens_out_of_the_text():
    # Left in, "<" + "|" would tie "a" + "b" (20 each) and win on its lower ids (60 < 97).
    tokenizer = ByteBPETokenizer.train("ab<|endoftext|>" * 20, vocab_size=258)
    assert tokenizer.merges == [(b"a", b"b")]


def test_train_rejects_impossible_sizes():
    with pytest.raises(ValueError, match="too small"):
        ByteBPETokenizer.train("hello", vocab_size=256)  # no room for <|endoftext|>


def test_encode_special_tokens_only_when_allowed(trained):
    eot = trained.eot_token
    text = "abc<|endoftext|>de"
    as_special = trained.encode(text, allowed_special="all")
    assert as_special.count(eot) == 1 and trained.decode(as_special) == text
    assert trained.encode(text, allowed_special={"<|endoftext|>"}) == as_special
    for as_text in (trained.encode(text), trained.encode(text, allowed_special="none")):
        assert eot not in as_text and trained.decode(as_text) == text
    with pytest.raises(ValueError, match="allowed_special"):
        trained.encode(text, allowed_special="everything")
    with pytest.raises(ValueError, match=re.escape("<|bogus|>")):
        trained.encode(text, allowed_special={"<|bogus|>"})


@pytest.mark.parametrize("bad_id", [400, -1])
def test_bpe_decode_rejects_ids_outside_the_vocabulary(trained, bad_id):
    with pytest.raises(ValueError, match=str(bad_id)):
        trained.decode([97, bad_id])


def test_bpe_save_load_round_trip(trained, tmp_path):
    trained.save(tmp_path)
    lines = (tmp_path / "merges.txt").read_text(encoding="utf-8").split("\n")
    assert lines[0] == "#version: 0.2" and len(lines) == 1 + len(trained.merges) + 1
    vocab_json = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    assert vocab_json["\u0120"] == ord(" ") and vocab_json["<|endoftext|>"] == 399
    restored = ByteBPETokenizer.load(tmp_path)
    assert restored.merges == trained.merges
    assert restored.special_tokens == trained.special_tokens
    text = synthetic_text(200, seed=1) + "<|endoftext|>\u00e9\U0001f600"
    assert restored.encode(text, allowed_special="all") == trained.encode(text, allowed_special="all")


def _corrupt(directory, file_name, edit):
    path = directory / file_name
    path.write_text(edit(path.read_text(encoding="utf-8")), encoding="utf-8")


@pytest.mark.parametrize(
    ("file_name", "edit", "message"),
    [
        ("vocab.json", lambda text: text[: len(text) // 2], r"vocab\.json: not valid JSON"),
        ("vocab.json", lambda text: "[1, 2]", r"vocab\.json: expected a JSON object"),
        ("vocab.json", lambda text: text.replace(": 0,", ': "0",', 1), r"vocab\.json: the id of"),
        ("merges.txt", lambda text: text.replace("\n", "\na b c\n", 1), r"merges\.txt, line 2"),
        ("merges.txt", lambda text: text + "a \u4e00\n", r"merges\.txt, line"),
        ("merges.txt", lambda text: text + "\u0100 \u0100\n", r"not in the vocabulary"),
        ("merges.txt", lambda text: text + text.split("\n")[1] + "\n", r"repeats merge"),
    ],
)
def test_bpe_corrupt_files_raise_clear_errors(trained, tmp_path, file_name, edit, message):
    trained.save(tmp_path)
    _corrupt(tmp_path, file_name, edit)
    with pytest.raises(ValueError, match=message):
        ByteBPETokenizer.load(tmp_path)


def test_bpe_missing_file_is_named(trained, tmp_path):
    trained.save(tmp_path)
    (tmp_path / "merges.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"merges\.txt"):
        ByteBPETokenizer.load(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"has vocab\.json but no merges\.txt"):
        load_tokenizer(tmp_path)


def test_load_tokenizer_picks_the_class_from_the_files(trained, tmp_path):
    assert load_tokenizer(tmp_path) is None  # an empty directory holds no tokenizer
    trained.save(tmp_path / "bpe")
    CharTokenizer.from_text("abc").save(tmp_path / "char")
    text = synthetic_text(50, seed=2)
    loaded_bpe = load_tokenizer(tmp_path / "bpe")
    assert isinstance(loaded_bpe, ByteBPETokenizer) and loaded_bpe.encode(text) == trained.encode(text)
    assert sorted(os.listdir(tmp_path / "bpe")) == ["merges.txt", "vocab.json"]  # written whole, nothing left over
    assert load_tokenizer(tmp_path / "char").to_dict() == {"type": "char", "chars": ["a", "b", "c"],
                                                           "unknown_token": None}
    # The tokenizers library's tokenizer.json, as current transformers saves GPT-2's, is a BPE one.
    tables = trained.to_dict()
    special = {"content": "<|endoftext|>", "id": tables["vocab"].pop("<|endoftext|>")}
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "tokenizer.json").write_text(json.dumps(
        {"model": {"type": "BPE", "vocab": tables["vocab"], "merges": tables["merges"]}, "added_tokens": [special]}))
    loaded_hf = load_tokenizer(tmp_path / "hf")
    assert isinstance(loaded_hf, ByteBPETokenizer) and loaded_hf.encode(text) == trained.encode(text)


def test_start_ids():
    assert start_ids(CharTokenizer.from_text("ab\n"), "ba") == [2, 1]
    assert start_ids(CharTokenizer.from_text("ab\n"), "") == [0]  # the newline, first in sorted order
    assert start_ids(CharTokenizer.from_text("xyz"), "") == [0]  # no newline: the first token
    bpe = ByteBPETokenizer.train("hello world " * 20, 260)
    assert start_ids(bpe, "") == [bpe.eot_token] == [259]


@settings(max_examples=150, deadline=None)
@given(st.text())
def test_trained_bpe_round_trip_property(trained, text):
    ids = trained.encode(text)
    assert all(0 <= token_id < trained.vocab_size for token_id in ids)
    assert trained.decode(ids) == text


# ----------------------------------------------------------------------------------------------
# GPT-2: our tokenizer loaded from the shared files versus tiktoken built from the same files


@pytest.fixture(scope="module")
def gpt2():
    directory = require_gpt2_tokenizer()
    return ByteBPETokenizer.from_files(directory / "vocab.json", directory / "merges.txt")


@pytest.fixture(scope="module")
def tiktoken_gpt2():
    tiktoken = require_oracle("tiktoken")
    load = require_oracle("tiktoken.load")
    directory = require_gpt2_tokenizer()
    # The data-gym reader takes the original encoder.json/vocab.bpe; vocab.json/merges.txt hold the
    # same content (it skips the first line of either merges file). TIKTOKEN_CACHE_DIR="" stops it
    # caching local files under /tmp.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIKTOKEN_CACHE_DIR", "")
        ranks = load.data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(directory / "merges.txt"), encoder_json_file=str(directory / "vocab.json")
        )
    return tiktoken.Encoding(
        name="gpt2-local", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256}
    )


def test_gpt2_known_ids(gpt2):
    assert gpt2.vocab_size == 50257
    assert gpt2.eot_token == 50256
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.decode(np.array([15496, 995])) == gpt2.decode(iter([15496, 995])) == "Hello world"
    assert gpt2.encode("<|endoftext|>", allowed_special="all") == [50256]


PARITY_TEXTS = {
    "empty": "",
    "emoji": "I \u2764\ufe0f \U0001f355! \U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 "
    "\U0001f3f3\ufe0f\u200d\U0001f308 \U0001f44d\U0001f3fd\U0001f44d\U0001f44d",
    "cjk": "\u4f60\u597d\uff0c\u4e16\u754c\uff01\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3002 "
    "\ud55c\uad6d\uc5b4",
    "latin_nfc": unicodedata.normalize("NFC", "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00c5ngstr\u00f6m"),
    "latin_nfd": unicodedata.normalize("NFD", "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00c5ngstr\u00f6m"),
    "arabic": "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645 \u0663\u0664\u0665",
    "hindi": "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e \u0967\u0968",
    "scripts": "\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac "
    "\u043a\u0438\u0440\u0438\u043b\u043b\u0438\u0446\u0430 \u05e2\u05d1\u05e8\u05d9\u05ea \u0e44\u0e17\u0e22",
    "crlf": "line one\r\nline two\r\n\r\n  \r\n",
    "tabs": "\tindented\t\tcolumns\t \t\n",
    "trailing_spaces": "ends with spaces   ",
    "newlines_only": "\n\n\n",
    "code": 'def f(x):\n    return x**2  # square\n\nif __name__ == "__main__":\n\tprint(f(3))\n',
    "numbers": "x\u00b2 + y\u00b2 = z\u00b2, \u00bd cup, \u216b o'clock, 3.14159, 1,000,000, \u2460\u2461\u2462",
    "contractions": "don't you'll I'm we've they're she'd it's I'LL DON'T We'Ve it\u2019s",
    "unicode_spaces": "a\u00a0b\u2003c\u3000d\u1680e\x85f\u2028g\u202f h",
    "separators": "a\x1c\x1cb x\x1f\x1f \x1e",
    "controls": "\x00\x01\x7f\x1b[0m",
    "special_as_text": "<|endoftext|>",
    "special_inside": "end<|endoftext|> start",
}
PARITY_TEXTS.update({f"spaces_{n}": "a" + " " * n + "b" + " " * n for n in (1, 2, 3, 4, 5, 8, 17, 64)})
PARITY_TEXTS.update({f"mixed_space_{n}": "x" + " \t\n" * n + "y\n" + " " * n for n in (1, 2, 5)})


@pytest.mark.parametrize("name", sorted(PARITY_TEXTS))
def test_gpt2_parity_with_tiktoken(gpt2, tiktoken_gpt2, name):
    text = PARITY_TEXTS[name]
    assert gpt2.encode(text) == tiktoken_gpt2.encode_ordinary(text)
    assert gpt2.encode(text, allowed_special="all") == tiktoken_gpt2.encode(text, allowed_special="all")
    assert gpt2.decode(gpt2.encode(text)) == text


def test_gpt2_lone_surrogates_are_replaced_like_tiktoken(gpt2, tiktoken_gpt2):
    for text in ("a\ud800b", "pair \ud83d\ude00 joined"):
        assert gpt2.encode(text) == tiktoken_gpt2.encode_ordinary(text)


def test_gpt2_invalid_utf8_decodes_to_replacement_character(gpt2, tiktoken_gpt2):
    directory = require_gpt2_tokenizer()
    # The token for the lone byte 0xE2 (a UTF-8 lead byte; printable Latin-1, so its key is itself).
    lead_byte_id = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))["\u00e2"]
    assert gpt2.decode([lead_byte_id]) == "\ufffd" == tiktoken_gpt2.decode([lead_byte_id])
    assert gpt2.decode_bytes([lead_byte_id]) == b"\xe2"
    assert gpt2.decode(gpt2.encode("x") + [lead_byte_id] * 2) == "x\ufffd\ufffd"


def test_gpt2_every_assigned_code_point_is_split_like_tiktoken(tiktoken_gpt2):
    # Whether a character is a letter, a number, white space or "other" decides where words end.
    # GPT-2's merges rarely join a character to its neighbours, so a wrong class could go unseen.
    # Here both tokenizers get merges joining each byte with a, 1, !, space and newline on either
    # side: a word boundary anywhere next to a probed character then changes the ids.
    tiktoken = require_oracle("tiktoken")
    vocab = {bytes([byte]): byte for byte in range(256)}
    merges = []
    for neighbour in (b"a", b"1", b"!", b" ", b"\n"):
        for byte in range(256):
            for left, right in ((neighbour, bytes([byte])), (bytes([byte]), neighbour)):
                if left + right not in vocab:
                    vocab[left + right] = len(vocab)
                    merges.append((left, right))
    ours = ByteBPETokenizer(vocab, merges, special_tokens={})
    oracle = tiktoken.Encoding(name="probe", pat_str=GPT2_PATTERN, mergeable_ranks=vocab, special_tokens={})
    private_use_samples = {0xE000, 0xF8FF, 0xF0000, 0x10FFFD}
    code_points = [
        code_point
        for code_point in range(sys.maxunicode + 1)
        if unicodedata.category(chr(code_point)) not in ("Cn", "Co", "Cs") or code_point in private_use_samples
    ]
    for start in range(0, len(code_points), 4096):
        text = "".join(f"a{c}1{c}!{c} {c}\n" for c in map(chr, code_points[start : start + 4096]))
        assert ours.encode(text) == oracle.encode_ordinary(text), f"code points from U+{code_points[start]:04X}"


@settings(max_examples=200, deadline=None)
@given(st.text(ASSIGNED_CHARACTERS))
def test_gpt2_parity_property(gpt2, tiktoken_gpt2, text):
    assert gpt2.encode(text) == tiktoken_gpt2.encode_ordinary(text)


def _long_words():
    """Pathological words thousands of bytes long (one pre-tokenized word each, except the random bytes)."""
    rng = np.random.default_rng(10)
    letters = "abcdefghijklmnopqrstuvwxyz" "\u00e9\u00df\u0430\u0431\u03b1\u4e00\u4e8c\u3042\u0915"  # all \p{L}
    return {
        "one_letter": "a" * 5000,
        "two_letters": "ab" * 2500,
        "digits": "1234567890" * 500,
        "accented": "\u00e9" * 3000,
        "punctuation": "!" * 3000 + "?." * 1000,
        "spaces": " " * 5000 + "x",
        "random_letters": "".join(rng.choice(list(letters[:26]), size=6000)),
        "random_unicode_letters": "".join(rng.choice(list(letters), size=3000)),
        "random_bytes": rng.integers(0, 256, size=6000, dtype=np.uint8).tobytes().decode("utf-8", "replace"),
    }


@pytest.mark.parametrize("name", sorted(_long_words()))
def test_gpt2_parity_with_tiktoken_on_long_words(gpt2, tiktoken_gpt2, name):
    text = _long_words()[name]
    assert gpt2.encode(text) == tiktoken_gpt2.encode_ordinary(text)


@settings(max_examples=150, deadline=None)
@given(st.text())
def test_gpt2_round_trip_property(gpt2, text):
    ids = gpt2.encode(text)
    assert all(0 <= token_id < gpt2.vocab_size for token_id in ids)
    assert gpt2.decode(ids) == text


def test_gpt2_from_original_openai_file_names(tiktoken_gpt2, tmp_path):
    directory = require_gpt2_tokenizer()
    shutil.copyfile(directory / "vocab.json", tmp_path / "encoder.json")
    merges = (directory / "merges.txt").read_text(encoding="utf-8").split("\n", 1)[1]
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\n" + merges, encoding="utf-8")
    tokenizer = ByteBPETokenizer.from_files(tmp_path / "encoder.json", tmp_path / "vocab.bpe")
    text = PARITY_TEXTS["code"] + PARITY_TEXTS["emoji"] + "<|endoftext|>"
    assert tokenizer.eot_token == 50256
    assert tokenizer.encode(text, allowed_special="all") == tiktoken_gpt2.encode(text, allowed_special="all")


def test_gpt2_save_writes_the_original_files_back(gpt2, tmp_path):
    directory = require_gpt2_tokenizer()
    gpt2.save(tmp_path)
    original_vocab = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
    assert json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8")) == original_vocab
    original_merges = (directory / "merges.txt").read_text(encoding="utf-8").split("\n")[1:]
    assert (tmp_path / "merges.txt").read_text(encoding="utf-8").split("\n")[1:] == original_merges


def test_to_dict_round_trip_for_both_kinds():
    from tokenizer import tokenizer_from_dict
    bpe = ByteBPETokenizer.train("low lower lowest newer wider " * 10, 270)
    char = CharTokenizer.from_text("hello")
    for tokenizer, text in ((bpe, "lower newest"), (char, "hole")):
        data = json.loads(json.dumps(tokenizer.to_dict()))
        rebuilt = tokenizer_from_dict(data)
        assert type(rebuilt) is type(tokenizer)
        assert rebuilt.encode(text) == tokenizer.encode(text)
    with pytest.raises(ValueError, match="unknown tokenizer type 'wordpiece'"):
        tokenizer_from_dict({"type": "wordpiece"})
    with pytest.raises(ValueError, match="the 'merges' entry, line 1"):
        ByteBPETokenizer.from_dict({"type": "byte_bpe", "vocab": bpe.to_dict()["vocab"], "merges": ["a b c"]})


@pytest.mark.parametrize("merge_form", ["strings", "pairs"])
def test_tokenizer_json_of_the_tokenizers_library_loads_like_the_two_files(tmp_path, merge_form):
    directory = require_gpt2_tokenizer()
    vocab = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
    merges = [line for line in (directory / "merges.txt").read_text(encoding="utf-8").splitlines()[1:] if line]
    special = {"id": vocab.pop("<|endoftext|>"), "content": "<|endoftext|>", "special": True}
    model = {"type": "BPE", "vocab": vocab,
             "merges": merges if merge_form == "strings" else [line.split(" ") for line in merges]}
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": model, "added_tokens": [special]}),
                                             encoding="utf-8")
    loaded = ByteBPETokenizer.from_tokenizer_json(tmp_path / "tokenizer.json")
    reference = ByteBPETokenizer.from_files(directory / "vocab.json", directory / "merges.txt")
    text = "Hello world, it's 2026 <|endoftext|> naïve café 日本語"
    assert loaded.encode(text, allowed_special="all") == reference.encode(text, allowed_special="all")
    assert loaded.eot_token == 50256 and loaded.vocab_size == 50257
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordPiece"}}), encoding="utf-8")
    with pytest.raises(ValueError, match="expected a BPE tokenizer"):
        ByteBPETokenizer.from_tokenizer_json(tmp_path / "tokenizer.json")

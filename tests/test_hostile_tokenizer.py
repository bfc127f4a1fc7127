"""Hostile inputs for tokenizer.py (issue 10): ids, texts, files and training arguments that are wrong get a
clear TypeError/ValueError naming the problem, never a raw traceback or a silently wrong result; and the BPE merge
loop, now a heap over a linked list, gives GPT-2's result at a cost that grows as n log n with the word length."""
import json
import re

import numpy as np
import pytest
from conftest import require_gpt2_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

import tokenizer as tokenizer_module
from tokenizer import ByteBPETokenizer, CharTokenizer


@pytest.fixture(scope="module")
def small_bpe():
    # Merges (l,o), (lo,w), ... learned from a few repeated words; 270 tokens, "<|endoftext|>" is 269.
    return ByteBPETokenizer.train("low lower lowest newer wider " * 10, 270)


@pytest.fixture(scope="module")
def char():
    return CharTokenizer.from_text("abc")


@pytest.fixture(params=["char", "bpe"])
def any_tokenizer(request, char, small_bpe):
    return char if request.param == "char" else small_bpe


# ----------------------------------------------------------------------------------------------
# decode: one checked lookup for both tokenizers

NOT_IDS = {  # each value and what its TypeError must mention
    "float": ([1.0], r"position 0 is 1\.0 \(float\)"),
    "half": ([0, 0.5], r"position 1 is 0\.5"),
    "string": ("ab", r"got str"),
    "bytes": (b"\x01", r"got bytes"),
    "none": (None, r"got NoneType"),
    "int": (5, r"got int"),
    "set": ({1, 2}, r"got set"),
    "dict": ({1: 2}, r"got dict"),
    "nested": ([[1, 2]], r"position 0 is \[1, 2\] \(list\); ids must be a flat sequence"),
    "ragged": ([1, [2]], r"position 1"),
    "none_id": ([None], r"position 0 is None"),
    "string_id": (["1"], r"position 0 is '1'"),
    "bool": ([True], r"position 0 is True \(bool\)"),
    "numpy_bool": ([np.True_], r"position 0"),
    "numpy_float": ([np.float64(1)], r"position 0"),
    "float_array": (np.array([1.0, 2.0]), r"dtype float64"),
    "bool_array": (np.array([True]), r"dtype bool"),
    "empty_float_array": (np.array([]), r"dtype float64"),
}


@pytest.mark.parametrize("name", sorted(NOT_IDS))
def test_decode_refuses_what_is_not_ids(any_tokenizer, name):
    ids, message = NOT_IDS[name]
    with pytest.raises(TypeError, match=message):
        any_tokenizer.decode(ids)


OUT_OF_RANGE = {
    "negative": ([-1], r"-1 at position 0"),
    "huge": ([0, 2**70], rf"{2**70} at position 1"),
    "huge_negative": ([-(2**70)], rf"-{2**70}"),
    "int64_max": (np.array([2**63 - 1]), rf"{2**63 - 1}"),
    "uint64_max": (np.array([2**64 - 1], dtype=np.uint64), rf"{2**64 - 1}"),
}


@pytest.mark.parametrize("name", sorted(OUT_OF_RANGE))
def test_decode_refuses_ids_outside_the_vocabulary(any_tokenizer, name):
    ids, message = OUT_OF_RANGE[name]
    with pytest.raises(ValueError, match=message + r".*outside the vocabulary"):
        any_tokenizer.decode(ids)


def test_decode_refuses_the_first_id_past_the_end(any_tokenizer):
    size = any_tokenizer.vocab_size
    with pytest.raises(ValueError, match=rf"token id {size} at position 1 is outside the vocabulary \[0, {size}\)"):
        any_tokenizer.decode([0, size])
    assert any_tokenizer.decode([size - 1]) == any_tokenizer.decode(np.array([size - 1]))


@pytest.mark.parametrize("ids", [np.zeros((2, 2), dtype=np.int64), np.array(1), np.zeros((1, 3), dtype=np.int8)])
def test_decode_refuses_arrays_that_are_not_one_dimensional(any_tokenizer, ids):
    with pytest.raises(ValueError, match=re.escape(f"one-dimensional, got an array of shape {ids.shape}")):
        any_tokenizer.decode(ids)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64])
def test_decode_accepts_one_dimensional_integer_arrays(char, dtype):
    assert char.decode(np.array([2, 0, 1], dtype=dtype)) == "cab"


@pytest.mark.parametrize("ids", [[2, 0, 1], (2, 0, 1), [np.int64(2), np.uint8(0), 1], range(2, -1, -1)])
def test_decode_accepts_sequences_and_numpy_integers(char, ids):
    assert char.decode(ids) in ("cab", "cba")
    assert char.decode(iter(ids)) == char.decode(list(ids))


def test_decode_of_nothing_is_empty(any_tokenizer):
    assert any_tokenizer.decode([]) == any_tokenizer.decode(np.array([], dtype=np.int64)) == ""


def test_bpe_decode_bytes_uses_the_same_checks(small_bpe):
    assert small_bpe.decode_bytes(np.array([104, 105])) == b"hi"
    with pytest.raises(TypeError, match="position 0"):
        small_bpe.decode_bytes([104.0])


# ----------------------------------------------------------------------------------------------
# encode and train: text must be a str


@pytest.mark.parametrize(("text", "message"), [(None, "got NoneType"), (b"abc", r"got bytes \(decode bytes to str"),
                                               (123, "got int"), (["a"], "got list")])
def test_encode_refuses_what_is_not_a_str(any_tokenizer, text, message):
    with pytest.raises(TypeError, match="text must be a str, " + message):
        any_tokenizer.encode(text)


@pytest.mark.parametrize("make", [lambda text: CharTokenizer.from_text(text),
                                  lambda text: ByteBPETokenizer.train(text, 300)])
def test_building_from_what_is_not_a_str_is_refused(make):
    for text in (None, b"abc", 5):
        with pytest.raises(TypeError, match="text must be a str"):
            make(text)


@pytest.mark.parametrize("allowed", [5, [1], [["<|endoftext|>"]], {None}])
def test_encode_refuses_allowed_special_that_is_not_strings(small_bpe, allowed):
    with pytest.raises(TypeError, match="allowed_special must be 'all', 'none' or a set of strings"):
        small_bpe.encode("low", allowed_special=allowed)


def test_encode_accepts_allowed_special_as_any_iterable_of_strings(small_bpe):
    eot = small_bpe.eot_token
    for allowed in (["<|endoftext|>"], ("<|endoftext|>",), iter(["<|endoftext|>"])):
        assert small_bpe.encode("<|endoftext|>", allowed_special=allowed) == [eot]


# ----------------------------------------------------------------------------------------------
# ByteBPETokenizer.train


@pytest.mark.parametrize("vocab_size", ["300", 300.0, None, True, 2.5])
def test_train_refuses_a_vocab_size_that_is_not_an_int(vocab_size):
    with pytest.raises(TypeError, match="vocab_size must be an int"):
        ByteBPETokenizer.train("low lower", vocab_size)


@pytest.mark.parametrize(("vocab_size", "special_tokens"), [(256, ("<|endoftext|>",)), (255, ()), (-1, ()),
                                                           (257, ("<|a|>", "<|b|>"))])
def test_train_refuses_a_vocab_size_below_the_bytes_and_specials(vocab_size, special_tokens):
    with pytest.raises(ValueError, match=f"vocab_size {vocab_size} is too small"):
        ByteBPETokenizer.train("low lower", vocab_size, special_tokens)


def test_train_accepts_a_numpy_integer_vocab_size():
    assert ByteBPETokenizer.train("aaaa", np.int64(258), special_tokens=()).vocab_size == 258


@pytest.mark.parametrize("vocab_size", [263, 10**12, 10**100])
def test_train_refuses_a_vocab_size_the_text_cannot_reach_before_training(vocab_size):
    # "abc abd" is two words, b"abc" and b" abd": at most 2 + 3 merges, so 256 + 5 + 1 special = 262 tokens.
    with pytest.raises(ValueError, match=r"too small for vocab_size .*at most 5 merges, so at most 262 tokens"):
        ByteBPETokenizer.train("abc abd", vocab_size)
    # Both words hold "ab", so one merge serves both and only 4 are learned: 262 is found out while training.
    with pytest.raises(ValueError, match="ran out of pairs to merge at 261 tokens"):
        ByteBPETokenizer.train("abc abd", 262)
    assert ByteBPETokenizer.train("abc abd", 261).vocab_size == 261


def test_train_stops_when_no_pairs_are_left():
    # b"aaaa": (a,a) makes "aa" -> [aa, aa], then (aa,aa) makes "aaaa": two merges, though the bound allows three.
    tokenizer = ByteBPETokenizer.train("aaaa", 258, special_tokens=())
    assert tokenizer.merges == [(b"a", b"a"), (b"aa", b"aa")]
    with pytest.raises(ValueError, match="ran out of pairs to merge at 258 tokens"):
        ByteBPETokenizer.train("aaaa", 259, special_tokens=())


def test_train_on_empty_text():
    with pytest.raises(ValueError, match="at most 0 merges, so at most 257 tokens"):
        ByteBPETokenizer.train("", 300)
    bytes_only = ByteBPETokenizer.train("", 257)
    assert bytes_only.merges == [] and bytes_only.eot_token == 256
    assert bytes_only.encode("hi") == [ord("h"), ord("i")] and bytes_only.decode([ord("h"), ord("i")]) == "hi"


@pytest.mark.parametrize(("special_tokens", "error", "message"), [
    ("<|endoftext|>", TypeError, "special_tokens must be a sequence of strings"),
    (None, TypeError, "special_tokens must be a sequence of strings"),
    ([5], ValueError, "special tokens must be non-empty strings, got 5"),
    ([""], ValueError, "special tokens must be non-empty strings, got ''"),
    (["<|a|>", "<|a|>"], ValueError, "special tokens must be distinct"),
])
def test_train_refuses_bad_special_tokens(special_tokens, error, message):
    with pytest.raises(error, match=re.escape(message)):
        ByteBPETokenizer.train("low lower", 300, special_tokens)


# ----------------------------------------------------------------------------------------------
# tokenizer.json (the `tokenizers` library's single file)


def tokenizer_json_of(tokenizer):
    """The tokenizer.json form of ``tokenizer``: regular tokens in model.vocab, special ones in added_tokens."""
    tables = tokenizer.to_dict()
    specials = tokenizer.special_tokens
    vocab = {text: token_id for text, token_id in tables["vocab"].items() if text not in specials}
    added = [{"id": token_id, "content": text, "special": True} for text, token_id in specials.items()]
    return {"model": {"type": "BPE", "vocab": vocab, "merges": [merge.split(" ") for merge in tables["merges"]]},
            "added_tokens": added}


def _set(keys, value):
    """An edit that sets data[k1][k2]... = value."""
    def edit(data):
        for key in keys[:-1]:
            data = data[key]
        data[keys[-1]] = value
    return edit


def _delete(*keys):
    def edit(data):
        for key in keys[:-1]:
            data = data[key]
        del data[keys[-1]]
    return edit


TOKENIZER_JSON_EDITS = {
    "merges_of_ints": (_set(["model", "merges"], [[1, 2]]), r"merge 0 is \[1, 2\]; expected a 'left right' string"),
    "merges_null": (_set(["model", "merges"], None), r"model\.merges must be a list, got None"),
    "merges_missing": (_delete("model", "merges"), r"model\.merges must be a list"),
    "merge_of_three": (_set(["model", "merges"], [["l", "o", "w"]]), r"merge 0 is \['l', 'o', 'w'\]"),
    "merge_without_space": (_set(["model", "merges"], ["lo"]), r"\(model\.merges\), line 1: expected two tokens"),
    "merge_of_unknown_token": (_set(["model", "merges"], [["l", "q"]]), r"needs b'lq', not in the vocabulary"),
    "added_tokens_int": (_set(["added_tokens"], 5), r"added_tokens must be a list, got 5"),
    "added_tokens_null": (_set(["added_tokens"], None), r"added_tokens must be a list, got None"),
    "added_token_int": (_set(["added_tokens"], [5]), r"added token 0 must be an object"),
    "content_int": (_set(["added_tokens", 0, "content"], 5), r"added token 0 must be an object with a non-empty"),
    "content_empty": (_set(["added_tokens", 0, "content"], ""), r"added token 0"),
    "content_missing": (_delete("added_tokens", 0, "content"), r"added token 0"),
    "added_id_string": (_set(["added_tokens", 0, "id"], "269"), r"an integer 'id'"),
    "added_id_bool": (_set(["added_tokens", 0, "id"], True), r"an integer 'id'"),
    "added_id_conflict": (_set(["added_tokens", 0, "content"], "l"), r"'l' has id 269, but model\.vocab gives it 108"),
    "model_missing": (_delete("model"), r"expected a BPE tokenizer .*got 'model': None"),
    "model_list": (_set(["model"], [1]), r"expected a BPE tokenizer"),
    "model_wordpiece": (_set(["model", "type"], "WordPiece"), r"expected a BPE tokenizer"),
    "vocab_list": (_set(["model", "vocab"], ["l"]), r"model\.vocab must be an object mapping token text to id"),
    "vocab_missing": (_delete("model", "vocab"), r"model\.vocab must be an object"),
    "vocab_id_string": (_set(["model", "vocab", "l"], "108"), r"the id of 'l' is '108', not an integer"),
    "vocab_id_float": (_set(["model", "vocab", "l"], 108.0), r"the id of 'l' is 108\.0, not an integer"),
    "vocab_id_null": (_set(["model", "vocab", "l"], None), r"the id of 'l' is None"),
    "vocab_id_repeated": (_set(["model", "vocab", "w"], 108), r"id 108 is used 2 times"),
    "vocab_id_negative": (_set(["model", "vocab", "l"], -1), r"id -1 is outside that range"),
    "vocab_id_huge": (_set(["model", "vocab", "l"], 2**70), rf"id {2**70} is outside that range"),
    "vocab_byte_missing": (_delete("model", "vocab", "l"), r"lacks 1 single-byte tokens"),
}


@pytest.mark.parametrize("name", sorted(TOKENIZER_JSON_EDITS))
def test_tokenizer_json_flaws_raise_clear_errors(small_bpe, tmp_path, name):
    edit, message = TOKENIZER_JSON_EDITS[name]
    data = tokenizer_json_of(small_bpe)
    edit(data)
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match=message) as error:
        ByteBPETokenizer.from_tokenizer_json(path)
    assert str(error.value).startswith(str(path))


TOKENIZER_JSON_TEXTS = {  # whole files that are not a tokenizer.json at all
    "list": (b"[1, 2]", r"expected a JSON object at the top level, got \[1, 2\]"),
    "null": (b"null", r"expected a JSON object at the top level, got None"),
    "not_utf8": (b'{"model": "\xff\xfe"}', r"not UTF-8 text"),
    "truncated": (b'{"model": {"type": "BPE", "vocab": {', r"not valid JSON"),
    "repeated_key": (b'{"model": 1, "model": 2}', r"not valid JSON \(the key 'model' appears more than once"),
    "deeply_nested": (b"[" * 100_000, r"not valid JSON \(nested too deeply\)"),
    "five_thousand_digit_id": (b'{"model": {"type": "BPE", "vocab": {"a": 1' + b"0" * 5000 + b"}}}", r"not valid JSON"),
}


@pytest.mark.parametrize("name", sorted(TOKENIZER_JSON_TEXTS))
def test_tokenizer_json_files_that_are_not_tokenizers(tmp_path, name):
    content, message = TOKENIZER_JSON_TEXTS[name]
    path = tmp_path / "tokenizer.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as error:
        ByteBPETokenizer.from_tokenizer_json(path)
    assert str(error.value).startswith(str(path))


def test_tokenizer_json_unedited_loads_the_same_tokenizer(small_bpe, tmp_path):
    # The control for the cases above: the file they start from is valid.
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(tokenizer_json_of(small_bpe)), encoding="utf-8")
    loaded = ByteBPETokenizer.from_tokenizer_json(path)
    assert loaded.merges == small_bpe.merges and loaded.special_tokens == small_bpe.special_tokens
    text = "lowest wider<|endoftext|>newer"
    assert loaded.encode(text, allowed_special="all") == small_bpe.encode(text, allowed_special="all")


# ----------------------------------------------------------------------------------------------
# vocab.json + merges.txt


VOCAB_JSON_EDITS = {
    "id_repeated": (lambda vocab: vocab.update(w=vocab["l"]), r"id 108 is used 2 times"),
    "id_negative": (lambda vocab: vocab.update(l=-5), r"id -5 is outside that range"),
    "id_huge": (lambda vocab: vocab.update(l=2**70), rf"id {2**70} is outside"),
    "id_float": (lambda vocab: vocab.update(l=108.0), r"the id of 'l' is 108\.0, not an integer"),
    "id_bool": (lambda vocab: vocab.update(l=True), r"the id of 'l' is True, not an integer"),
    "id_null": (lambda vocab: vocab.update(l=None), r"the id of 'l' is None, not an integer"),
    "id_list": (lambda vocab: vocab.update(l=[108]), r"the id of 'l' is \[108\], not an integer"),
}


@pytest.mark.parametrize("name", sorted(VOCAB_JSON_EDITS))
def test_vocab_json_flaws_name_the_file_and_the_problem(small_bpe, tmp_path, name):
    edit, message = VOCAB_JSON_EDITS[name]
    small_bpe.save(tmp_path)
    vocab = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    edit(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    with pytest.raises(ValueError, match=message) as error:
        ByteBPETokenizer.load(tmp_path)
    assert str(error.value).startswith(str(tmp_path / "vocab.json"))


@pytest.mark.parametrize(("file_name", "content", "message"), [
    ("vocab.json", b'{"a": 0, "a": 1}', r"vocab\.json: not valid JSON \(the key 'a' appears more than once"),
    ("vocab.json", b'"\xff"', r"vocab\.json: not UTF-8 text"),
    ("vocab.json", b"{}", r"vocab\.json and .*merges\.txt do not form a valid tokenizer: .*lacks 256 single-byte"),
    ("vocab.json", b"null", r"vocab\.json: expected a JSON object mapping token text to id"),
    ("merges.txt", b"#version: 0.2\n\xc4\xa0 \xff\n", r"merges\.txt: not UTF-8 text"),
    ("merges.txt", b"#version: 0.2\nl z\n", r"needs b'lz', not in the vocabulary"),
])
def test_vocab_and_merges_files_that_are_broken(small_bpe, tmp_path, file_name, content, message):
    small_bpe.save(tmp_path)
    (tmp_path / file_name).write_bytes(content)
    with pytest.raises(ValueError, match=message):
        ByteBPETokenizer.load(tmp_path)


# ----------------------------------------------------------------------------------------------
# CharTokenizer files and dicts


CHAR_DICTS = {
    "chars_string": ({"type": "char", "chars": "abc"}, r"'chars' entry must be a list of single characters"),
    "chars_null": ({"type": "char", "chars": None}, r"'chars' entry must be a list"),
    "chars_missing": ({"type": "char"}, r"'chars' entry must be a list"),
    "chars_ints": ({"type": "char", "chars": [1, 2]}, r"every vocabulary entry must be a single character, got 1"),
    "chars_long": ({"type": "char", "chars": ["a", "bc"]}, r"single character, got 'bc'"),
    "chars_empty": ({"type": "char", "chars": []}, r"the vocabulary is empty"),
    "chars_repeated": ({"type": "char", "chars": ["a", "a"]}, r"distinct; repeated: \['a'\]"),
    "unknown_int": ({"type": "char", "chars": ["a"], "unknown_token": 5}, r"unknown_token must be a single character"),
    "unknown_long": ({"type": "char", "chars": ["a"], "unknown_token": "ab"}, r"unknown_token must be a single"),
    "unknown_absent": ({"type": "char", "chars": ["a"], "unknown_token": "z"}, r"'z' is not in the vocabulary"),
    "type_missing": ({"chars": ["a"]}, r"expected a dict with 'type': 'char'"),
    "type_bpe": ({"type": "byte_bpe", "chars": ["a"]}, r"expected a dict with 'type': 'char'"),
    "list": (["a", "b"], r"expected a dict with 'type': 'char'"),
}


@pytest.mark.parametrize("name", sorted(CHAR_DICTS))
def test_char_tokenizer_dicts_and_files_that_are_broken(tmp_path, name):
    data, message = CHAR_DICTS[name]
    with pytest.raises(ValueError, match=message):
        CharTokenizer.from_dict(data)
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match=message) as error:
        CharTokenizer.load(tmp_path)  # the directory holding tokenizer.json
    assert str(error.value).startswith(f"{path}: not a character tokenizer")


@pytest.mark.parametrize(("content", "message"), [(b'{"type": "char", "chars": ["\xff"]}', "not UTF-8 text"),
                                                  (b'{"type": "char", "type": "char"}', "appears more than once"),
                                                  (b"[[[[", "not valid JSON")])
def test_char_tokenizer_files_that_are_not_json(tmp_path, content, message):
    path = tmp_path / "tokenizer.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(f"{path}: ") + ".*" + message):
        CharTokenizer.load(tmp_path)  # the directory holding tokenizer.json


def test_char_tokenizer_refuses_chars_that_are_not_iterable():
    with pytest.raises(TypeError, match="chars must be a sequence of single characters, got int"):
        CharTokenizer(5)


# ----------------------------------------------------------------------------------------------
# The BPE merge loop: the same result as GPT-2's, at O(n log n)


def gpt2_bpe(word, ranks):
    """GPT-2's encoder.py ``bpe``, written over token bytes: find the applicable pair of lowest rank, merge all
    its occurrences scanning left to right, repeat. ranks: {(left bytes, right bytes): rank}."""
    symbols = [bytes([byte]) for byte in word]
    while len(symbols) > 1:
        candidates = [(ranks[pair], pair) for pair in zip(symbols, symbols[1:]) if pair in ranks]
        if not candidates:
            break
        _, (first, second) = min(candidates)
        merged, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and symbols[i] == first and symbols[i + 1] == second:
                merged.append(first + second)
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


def bpe_from_merges(merges):
    vocab = {bytes([byte]): byte for byte in range(256)}
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    return ByteBPETokenizer(vocab, merges, special_tokens={})


def encoded_pieces(tokenizer, text):
    return [tokenizer.decode_bytes([token_id]) for token_id in tokenizer.encode(text)]


def test_overlapping_pairs_merge_left_to_right():
    tokenizer = bpe_from_merges([(b"a", b"a")])
    assert encoded_pieces(tokenizer, "aaa") == [b"aa", b"a"]
    assert encoded_pieces(tokenizer, "aaaaa") == [b"aa", b"aa", b"a"]


def test_a_merge_applies_everywhere_before_a_lower_rank_it_creates():
    # Merges in an unlearned order: (aa, a) ranks before (a, a). GPT-2 merges every (a, a) of "aaaa" first,
    # giving [aa, aa], where no rank-0 pair is left; merging only the leftmost (a, a) and then looking for
    # the lowest rank again would give [aaa, a].
    tokenizer = bpe_from_merges([(b"aa", b"a"), (b"a", b"a")])
    assert encoded_pieces(tokenizer, "aaaa") == [b"aa", b"aa"]
    assert encoded_pieces(tokenizer, "aaa") == [b"aaa"]


@st.composite
def merge_tables(draw):
    """Up to 14 merges over the letters a, b, c and what they build, in learned or in shuffled order."""
    tokens, merges = [b"a", b"b", b"c"], []
    for _ in range(draw(st.integers(0, 14))):
        pair = (draw(st.sampled_from(tokens)), draw(st.sampled_from(tokens)))
        if pair not in merges:
            merges.append(pair)
            if pair[0] + pair[1] not in tokens:
                tokens.append(pair[0] + pair[1])
    if draw(st.booleans()):
        merges = draw(st.permutations(merges))
    return merges


@settings(max_examples=200, deadline=None)
@given(merge_tables(), st.text(alphabet="abc", max_size=60))
def test_merge_loop_matches_gpt2_on_any_merge_table(merges, word):
    ranks = {pair: rank for rank, pair in enumerate(merges)}
    assert encoded_pieces(bpe_from_merges(merges), word) == gpt2_bpe(word.encode(), ranks)


@pytest.fixture(scope="module")
def letters_bpe():
    """A BPE trained on words of random letters, so that long random words meet many merges."""
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abcdefghij"), size=rng.integers(2, 12))) for _ in range(3000)]
    return ByteBPETokenizer.train(" ".join(words), 800, special_tokens=())


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet="abcdefghij", max_size=400))
def test_merge_loop_matches_gpt2_on_a_trained_tokenizer(letters_bpe, word):
    ranks = {pair: rank for rank, pair in enumerate(letters_bpe.merges)}
    assert encoded_pieces(letters_bpe, word) == gpt2_bpe(word.encode(), ranks)


class CountingDict(dict):
    """A dict that counts its lookups."""
    lookups = 0

    def __contains__(self, key):
        CountingDict.lookups += 1
        return super().__contains__(key)

    def __getitem__(self, key):
        CountingDict.lookups += 1
        return super().__getitem__(key)

    def get(self, key, default=None):
        CountingDict.lookups += 1
        return super().get(key, default)


@pytest.mark.parametrize("kind", ["one_letter", "random_letters"])
def test_merge_loop_looks_up_each_pair_a_bounded_number_of_times(letters_bpe, monkeypatch, kind):
    # The cost of a merge loop that rescans the word after each merge grows as (length x merges applied):
    # millions of pair lookups for this word. A linked list with a heap looks up O(1) pairs per symbol
    # and per merge; timing is left to the benchmark in the report, lookups can be counted exactly.
    n = 65536
    word = "a" * n if kind == "one_letter" else "".join(np.random.default_rng(1).choice(list("abcdefghij"), size=n))
    monkeypatch.setattr(letters_bpe, "_merge_ranks", CountingDict(letters_bpe._merge_ranks))
    monkeypatch.setattr(letters_bpe, "_word_cache", {})
    CountingDict.lookups = 0
    pieces = encoded_pieces(letters_bpe, word)
    assert b"".join(pieces) == word.encode()
    assert CountingDict.lookups < 8 * n


def test_word_cache_is_bounded_and_skips_long_words(small_bpe, monkeypatch):
    monkeypatch.setattr(tokenizer_module, "_WORD_CACHE_LIMIT", 5)
    monkeypatch.setattr(small_bpe, "_word_cache", {})
    words = [f"w{'x' * length}" for length in range(40)] + ["l" * 5000]
    text = " ".join(words)
    first = small_bpe.encode(text)
    assert len(small_bpe._word_cache) <= 5
    assert all(len(word) <= 100 for word in small_bpe._word_cache)
    assert small_bpe.encode(text) == first  # a cache emptied midway changes nothing
    assert small_bpe.decode(first) == text


# ----------------------------------------------------------------------------------------------
# GPT-2's own tokenizer on long words


@pytest.fixture(scope="module")
def gpt2():
    directory = require_gpt2_tokenizer()
    return ByteBPETokenizer.from_files(directory / "vocab.json", directory / "merges.txt")


@settings(max_examples=30, deadline=None)
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=100, max_size=2000))
def test_gpt2_merge_loop_matches_gpt2_reference_on_long_words(gpt2, word):
    ranks = {pair: rank for rank, pair in enumerate(gpt2.merges)}
    assert encoded_pieces(gpt2, word) == gpt2_bpe(word.encode(), ranks)

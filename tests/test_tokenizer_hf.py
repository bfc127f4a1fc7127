"""HFTokenizer: Hugging Face tokenizer.json files of the Llama 3 / Qwen2 / SmolLM and the Llama 2 / Mistral /
TinyLlama families, checked against the `tokenizers` library (the oracle), which builds every tokenizer here
offline by training a small BPE with each family's components."""
import json
import re
import unicodedata

import pytest
from conftest import require_oracle
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenizer import ByteBPETokenizer, HFTokenizer, load_tokenizer, tokenizer_from_dict

# The pre-tokenization patterns of Llama 3 and Qwen2, as their tokenizer.json files spell them.
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")

SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
LLAMA2_SPECIALS = ["<unk>", "<s>", "</s>"]

# Mixed scripts, emoji (with a skin-tone modifier and a joiner), runs of spaces and newlines, tabs, CRLF,
# digit runs longer than 3, contractions in both cases, a long s (it case-folds to "s") and special tokens
# written inside the text.
MIXED_TEXT = ("<|begin_of_text|>Hello  world,\n\n\n it's 2026 and I'M 12345678 years old!\r\n\tTab\t\there.  "
              "naïve café — Ωμέγα; 日本語のテキスト 한국어 العربية हिन्दी 😀👍🏽 👩‍💻 'ſ 'S ok<|eot_id|>"
              "   \n  trailing<s>Hello</s> x <unk> 3.14159 ¾ ٣٤ end   ")
EDGE_TEXTS = ["", " ", "  ", "\n", "a", " a", "  a  ", "<s>", "<s><s>", "x<s>", "<|eot_id|>", "1234567",
              "\r\n\r\n", "😀", "Ω", " <s> x", "it's", "IT'LL", "a\u3000b"]

# Training text: every script of the texts above appears (so merges form), but not every character (so the
# unknown-character paths run).
CORPUS = ("Hello world, it's a test of the tokenizer. I'M here, don't go! 12345 678 90.\n\n"
          "naïve café Ωμέγα 日本語 テキスト 😀 \t tabs   spaces\r\n") * 30


def _train(tokenizers, tokenizer, vocab_size, special_tokens, initial_alphabet=()):
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens,
                                             initial_alphabet=list(initial_alphabet), show_progress=False)
    tokenizer.train_from_iterator([CORPUS], trainer)
    return tokenizer


def _byte_level(tokenizers, pre_tokenizers, normalizer=None, ignore_merges=False):
    """Llama 3 / Qwen2 / SmolLM: byte-level BPE after the family's own pre-tokenizers, with added tokens."""
    t = tokenizers
    tokenizer = t.Tokenizer(t.models.BPE(ignore_merges=ignore_merges))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = t.pre_tokenizers.Sequence(pre_tokenizers)
    tokenizer.decoder = t.decoders.ByteLevel()
    _train(t, tokenizer, 420, SPECIALS, t.pre_tokenizers.ByteLevel.alphabet())
    # Non-special added tokens: one matched in the raw text, one in the normalized text (the library's default).
    tokenizer.add_tokens([t.AddedToken("<s>", normalized=False), t.AddedToken("hello there")])
    return tokenizer


def llama3(t):
    return _byte_level(t, [t.pre_tokenizers.Split(t.Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
                           t.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)], ignore_merges=True)


def qwen2(t):
    tokenizer = _byte_level(t, [t.pre_tokenizers.Split(t.Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
                                t.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)],
                            normalizer=t.normalizers.NFC())
    return tokenizer


def smollm(t):
    # Trained with Llama 3's digit groups so that merges of digits exist, which SmolLM's Digits pre-tokenizer
    # (one digit per word) must then keep from applying.
    tokenizer = llama3(t)
    tokenizer.pre_tokenizer = t.pre_tokenizers.Sequence([t.pre_tokenizers.Digits(individual_digits=True),
                                                         t.pre_tokenizers.ByteLevel(add_prefix_space=False)])
    return tokenizer


def _sentencepiece_like(t, byte_fallback=True, fuse_unk=True, metaspace=None):
    """Llama 2 / Mistral / TinyLlama: BPE over "▁"-marked text, <0xNN> byte tokens, <s> added in front."""
    tokenizer = t.Tokenizer(t.models.BPE(unk_token="<unk>", byte_fallback=byte_fallback, fuse_unk=fuse_unk))
    if metaspace is None:
        tokenizer.normalizer = t.normalizers.Sequence([t.normalizers.Prepend("▁"), t.normalizers.Replace(" ", "▁")])
        tokenizer.decoder = t.decoders.Sequence([t.decoders.Replace("▁", " "), t.decoders.ByteFallback(),
                                                 t.decoders.Fuse(), t.decoders.Strip(" ", 1, 0)])
    else:
        tokenizer.pre_tokenizer = t.pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=metaspace, split=False)
        tokenizer.decoder = t.decoders.Sequence([t.decoders.Metaspace(replacement="▁", prepend_scheme=metaspace,
                                                                      split=False), t.decoders.ByteFallback(),
                                                 t.decoders.Fuse()])
    byte_tokens = [f"<0x{byte:02X}>" for byte in range(256)] if byte_fallback else []
    _train(t, tokenizer, 420 + len(byte_tokens), LLAMA2_SPECIALS + byte_tokens)
    tokenizer.post_processor = t.processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer.add_special_tokens(SPECIALS)
    tokenizer.add_tokens(["hello there"])  # matched in the normalized text as "▁hello▁there"
    return tokenizer


FAMILIES = {
    "llama3": llama3,
    "qwen2": qwen2,
    "smollm": smollm,
    "llama2": _sentencepiece_like,
    "metaspace_first": lambda t: _sentencepiece_like(t, metaspace="first"),
    "metaspace_always_split": lambda t: _with_metaspace_split(_sentencepiece_like(t, metaspace="always")),
    "unknown_fused": lambda t: _sentencepiece_like(t, byte_fallback=False),
    "unknown_not_fused": lambda t: _sentencepiece_like(t, byte_fallback=False, fuse_unk=False),
}


def _with_metaspace_split(tokenizer):
    from tokenizers import pre_tokenizers
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    return tokenizer


def _library_and_ours(family, directory):
    """(the library's tokenizer, ours loaded from the tokenizer.json it saved) for one family."""
    library = FAMILIES[family](require_oracle("tokenizers"))
    library.save(str(directory / "tokenizer.json"))
    ours = load_tokenizer(directory)
    assert isinstance(ours, HFTokenizer)
    return library, ours


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def pair(request, tmp_path_factory):
    return _library_and_ours(request.param, tmp_path_factory.mktemp(request.param))


def _assert_same(library, ours, text):
    for add_special_tokens in (True, False):
        expected = library.encode(text, add_special_tokens=add_special_tokens).ids
        assert ours.encode(text, add_special_tokens=add_special_tokens) == expected, (text, add_special_tokens)
    assert ours.decode(expected) == library.decode(expected, skip_special_tokens=False), text


@pytest.mark.parametrize("text", [MIXED_TEXT, *EDGE_TEXTS])
def test_encode_and_decode_equal_the_library(pair, text):
    _assert_same(*pair, text)


def test_the_mixed_text_exercises_specials_merges_and_unknown_characters(pair):
    # The control for the comparisons: they cover special ids, merged tokens and characters outside the
    # trained alphabet, not just single characters.
    library, ours = pair
    encoding = library.encode(MIXED_TEXT)
    assert library.token_to_id("<|eot_id|>") in encoding.ids
    assert any(len(token) > 2 for token in encoding.tokens)
    assert len(set(ours.encode(MIXED_TEXT))) > 40


# Any assigned character (unassigned ones may be letters in the library's newer Unicode tables), with the
# special tokens and the corpus's words mixed in so that merges and added tokens take part.
_PIECES = st.one_of(st.characters(blacklist_categories=("Cs", "Cn")), st.sampled_from(
    [*SPECIALS, "<s>", "</s>", "hello there", " ", "  ", "\n", "\r\n", "'s", "'LL", "123456", "Hello", " world",
     "😀", "日本語", "naïve", "\u0301", "ſ"]))


@settings(max_examples=40, deadline=None)
@given(pieces=st.lists(_PIECES, max_size=30))
def test_random_texts_equal_the_library(pair, pieces):
    _assert_same(*pair, "".join(pieces))


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_random_ids_decode_like_the_library(pair, data):
    # Arbitrary ids, byte tokens in any order included: invalid UTF-8 must be replaced as the library does.
    library, ours = pair
    ids = data.draw(st.lists(st.integers(0, ours.vocab_size - 1), max_size=20))
    assert ours.decode(ids) == library.decode(ids, skip_special_tokens=False)


@pytest.mark.parametrize("family", ["llama2", "metaspace_first"])
def test_invalid_byte_runs_become_one_replacement_character_per_byte(family, tmp_path):
    library, ours = _library_and_ours(family, tmp_path)
    ids = [library.token_to_id(token) for token in ("<0xE2>", "<0xE2>", "<0x82>", "<0xAC>", "<s>", "<0xE2>")]
    assert ours.decode(ids) == library.decode(ids, skip_special_tokens=False) == "\ufffd" * 4 + "<s>\ufffd"


def test_ignore_merges_takes_a_word_whole_from_the_vocabulary(llama3_json, tmp_path):
    # Llama 3's files set ignore_merges: a word found in the vocabulary is one token even where the merges
    # would not build it.
    tokenizers = require_oracle("tokenizers")
    data = json.loads(json.dumps(llama3_json))
    word_id = max(token["id"] for token in data["added_tokens"]) + 1
    data["model"]["vocab"]["Ġtokenizerz"] = word_id
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    library = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    text = "the tokenizerz tokenizer"
    assert HFTokenizer(data).encode(text) == library.encode(text).ids
    assert word_id in library.encode(text).ids


def test_merges_apply_one_at_a_time_as_in_the_library():
    # A merges table in an order no training produces: after "a b" -> "ab", the pair "ab a" (rank 0) comes
    # next, before the second "a b" (rank 1); GPT-2's merge-everywhere rounds would give "ab ab" instead.
    tokenizers = require_oracle("tokenizers")
    data = {"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "aba": 3}, "merges": [["ab", "a"], ["a", "b"]]}}
    library = tokenizers.Tokenizer.from_str(json.dumps(data))
    assert HFTokenizer(data).encode("abab") == library.encode("abab").ids == [3, 1]


# ----------------------------------------------------------------------------------------------
# The Split regex: Oniguruma's dialect translated into Python's `re`


@pytest.mark.parametrize("pattern", [
    r"(?i:'s|'t|k)|\p{L}++|(?>\p{N}+)|\s+|.",     # case folding (ſ, K), possessive and atomic constructs
    r"\p{Lu}\p{Ll}*|\P{L}+?",                      # subcategories, a negated property, a lazy quantifier
    r"(?<=a)b|[\x{3b1}-\x{3c9}]+|x{2,3}|(?=q)",      # look-behind, \x{...} in a class, an interval, empty matches
])
def test_translated_patterns_split_like_the_library(pattern):
    tokenizers = require_oracle("tokenizers")
    splitter = tokenizers.pre_tokenizers.Split(tokenizers.Regex(pattern), behavior="isolated")
    library = tokenizers.Tokenizer(tokenizers.models.BPE())
    library.pre_tokenizer = splitter
    ours = HFTokenizer(json.loads(library.to_str()))
    text = "'S 'ſ 'K Kelvin aabab ABCdef ++ 123 4 qq xxxx αβγδ ΑΒΓ ω 𝒜𝒷 ٣٤ \n\n"
    expected = [piece for piece, _ in splitter.pre_tokenize_str(text)]
    assert [word for word in ours._pre_tokenizers[0](text, True)] == expected


@pytest.mark.parametrize("pattern, construct", [
    (r"^\w+", "the anchor '^'"),
    (r"\w+", r"the escape \w"),
    (r"\d+", r"the escape \d"),
    (r"\p{Han}+", r"the property \p{Han}"),
    (r"\p{Cn}", r"the property \p{Cn}"),
    (r"(?<word>a)", "the group '(?<w'"),
    (r"(?i)a", "the group '(?i)'"),
    (r"\p{N}{1,3}+", "'{n,m}+'"),
    (r"[a[b]]", "a nested class"),
    (r"[a-z&&[^aeiou]]", "a nested class or class operation"),
    (r"[^\P{L}]", "a negated property inside a class"),
    (r"(?i:ss)", "a multi-character case folding"),
    (r"[ab", "an unterminated class"),
    (r"a)", "not a valid pattern"),
])
def test_untranslatable_patterns_are_refused(pattern, construct):
    data = {"model": {"type": "BPE", "vocab": {}, "merges": []},
            "pre_tokenizer": {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated",
                              "invert": False}}
    with pytest.raises(ValueError, match=re.escape(construct)):
        HFTokenizer(data)


# ----------------------------------------------------------------------------------------------
# Components that are not supported are refused, naming them


@pytest.fixture(scope="module")
def llama3_json():
    tokenizers = require_oracle("tokenizers")
    return json.loads(llama3(tokenizers).to_str())


# name: ((the path of a value in the file, the value written there instead), what the error says)
REFUSALS = {
    "normalizer_lowercase": ((["normalizer"], {"type": "Lowercase"}), "unsupported normalizer"),
    "normalizer_regex_replace": ((["normalizer"], {"type": "Replace", "pattern": {"Regex": " +"}, "content": " "}),
                                 "unsupported Replace pattern"),
    "pre_tokenizer_whitespace": ((["pre_tokenizer"], {"type": "Whitespace"}),
                                 "unsupported pre_tokenizer {'type': 'Whitespace'}"),
    "split_removed": ((["pre_tokenizer", "pretokenizers", 0, "behavior"], "Removed"),
                      "unsupported pre_tokenizer"),
    "split_inverted": ((["pre_tokenizer", "pretokenizers", 0, "invert"], True), "unsupported pre_tokenizer"),
    "byte_level_prefix_space": ((["pre_tokenizer", "pretokenizers", 1, "add_prefix_space"], True),
                                "unsupported pre_tokenizer"),
    "metaspace_old_form": ((["pre_tokenizer"], {"type": "Metaspace", "replacement": "▁", "add_prefix_space": True}),
                           "unsupported pre_tokenizer"),
    "decoder_wordpiece": ((["decoder"], {"type": "WordPiece", "prefix": "##", "cleanup": True}),
                          "unsupported decoder"),
    "model_unigram": ((["model", "type"], "Unigram"), "unsupported model 'Unigram'"),
    "model_dropout": ((["model", "dropout"], 0.1), "unsupported model.dropout 0.1"),
    "model_suffix": ((["model", "end_of_word_suffix"], "</w>"), "unsupported model.end_of_word_suffix"),
    "unknown_token_missing": ((["model", "unk_token"], "<unk>"), "model.unk_token '<unk>' is not in"),
    "byte_fallback_without_bytes": ((["model", "byte_fallback"], True), "needs the 256 byte tokens"),
    "lstrip": ((["added_tokens", 0, "lstrip"], True), "unsupported 'lstrip' of added token"),
    "rstrip": ((["added_tokens", 0, "rstrip"], True), "unsupported 'rstrip' of added token"),
    "single_word": ((["added_tokens", 0, "single_word"], True), "unsupported 'single_word'"),
    "truncation": ((["truncation"], {"max_length": 8}), "unsupported truncation"),
    "post_processor_roberta": ((["post_processor"], {"type": "RobertaProcessing"}),
                               "unsupported post_processor"),
    "template_unknown_token": ((["post_processor"], {"type": "TemplateProcessing", "single": [
        {"SpecialToken": {"id": "<x>", "type_id": 0}}], "pair": [], "special_tokens": {}}),
        "unsupported post_processor template item"),
    "merge_repeated": ((["model", "merges", 1], lambda data: data["model"]["merges"][0]), "repeats merge 0"),
    "ids_with_a_gap": ((["added_tokens", -1, "id"], 10_000), "each used once"),
}


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_unsupported_components_are_refused_by_name(llama3_json, tmp_path, name):
    ((*parents, last), value), message = REFUSALS[name]
    data = json.loads(json.dumps(llama3_json))
    HFTokenizer(json.loads(json.dumps(data)))  # the control: the unedited file loads
    target = data
    for key in parents:
        target = target[key]
    target[last] = value(data) if callable(value) else value
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        load_tokenizer(tmp_path)
    assert str(error.value).startswith(str(path))


def test_gpt2_loader_refuses_other_pipelines(llama3_json, tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(llama3_json), encoding="utf-8")
    with pytest.raises(ValueError, match="not GPT-2's; load it with tokenizer.HFTokenizer"):
        ByteBPETokenizer.from_tokenizer_json(path)


def test_gpt2_pipeline_still_loads_as_byte_bpe(tmp_path):
    # GPT-2's own tokenizer.json (ByteLevel pre-tokenizer with GPT-2's pattern) stays a ByteBPETokenizer.
    tokenizers = require_oracle("tokenizers")
    library = tokenizers.Tokenizer(tokenizers.models.BPE())
    library.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    library.decoder = tokenizers.decoders.ByteLevel()
    _train(tokenizers, library, 300, ["<|endoftext|>"], tokenizers.pre_tokenizers.ByteLevel.alphabet())
    library.save(str(tmp_path / "tokenizer.json"))
    ours = load_tokenizer(tmp_path)
    assert type(ours) is ByteBPETokenizer
    assert ours.encode(CORPUS[:200]) == library.encode(CORPUS[:200]).ids


def test_tokenizer_json_wins_over_vocab_and_merges_beside_it(tmp_path):
    # Hub directories of Llama-3-style models may also hold vocab.json + merges.txt; read alone, they would lose the
    # model's own pipeline (its pre-tokenization pattern, its special tokens) and encode differently.
    tokenizers = require_oracle("tokenizers")
    library = llama3(tokenizers)
    library.save(str(tmp_path / "tokenizer.json"))
    library.model.save(str(tmp_path))  # vocab.json + merges.txt
    assert (tmp_path / "vocab.json").is_file() and (tmp_path / "merges.txt").is_file()
    text = "<|begin_of_text|>In 2024, 12345 apples cost 678.90 dollars."
    gpt2_style = ByteBPETokenizer.load(tmp_path)
    assert gpt2_style.encode(text) != library.encode(text).ids  # the control: the two pipelines differ here
    ours = load_tokenizer(tmp_path)
    assert type(ours) is HFTokenizer
    assert ours.encode(text) == library.encode(text).ids


def test_round_trips_through_dict_and_directory(pair, tmp_path):
    _, ours = pair
    for rebuilt in (tokenizer_from_dict(json.loads(json.dumps(ours.to_dict()))),
                    (ours.save(tmp_path / "saved"), load_tokenizer(tmp_path / "saved"))[1]):
        assert type(rebuilt) is HFTokenizer
        assert rebuilt.encode(MIXED_TEXT) == ours.encode(MIXED_TEXT)
        assert rebuilt.vocab_size == ours.vocab_size


def test_bad_ids_and_text_are_refused(pair):
    _, ours = pair
    with pytest.raises(ValueError, match="outside the vocabulary"):
        ours.decode([ours.vocab_size])
    with pytest.raises(TypeError, match="text must be a str"):
        ours.encode(b"bytes")


def test_unicode_tables_agree_on_the_test_characters():
    # The comparisons rely on Python's Unicode tables knowing every character of the mixed text.
    assert all(unicodedata.category(char) != "Cn" for char in MIXED_TEXT)

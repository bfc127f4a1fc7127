"""Tokenizers: one id per character, GPT-2's byte-level byte-pair encoding (BPE), and Hugging Face tokenizer.json.

A language model reads integer ids, not text. Three tokenizers make that translation:

* ``CharTokenizer`` gives each distinct character of a training text its own id (nanoGPT's
  shakespeare_char setup). Tiny vocabulary, long sequences, no learning needed.
* ``ByteBPETokenizer`` is GPT-2's tokenizer. Text is first cut into words by a regular expression
  (pre-tokenization: letters, digits, punctuation and whitespace runs become separate words), each
  word becomes its UTF-8 bytes (256 base tokens, so any text can be encoded), and then learned merges
  join adjacent tokens into longer ones, the earliest-learned merge first. It can learn merges from a
  text (``ByteBPETokenizer.train``) or load GPT-2's own files (``ByteBPETokenizer.from_files``); with
  GPT-2's files it produces the same ids as GPT-2 (checked against tiktoken in the tests).
* ``HFTokenizer`` runs the pipeline a Hugging Face tokenizer.json describes, for the BPE families of
  Llama 3 / Qwen2 / SmolLM (byte-level, with their own split pattern) and Llama 2 / Mistral / TinyLlama
  ("▁"-marked text with <0xNN> byte fallback), with the ids of the `tokenizers` library (checked against it).
  Each supported component is reproduced exactly; any other is refused by name.

GPT-2's pattern without the third-party ``regex`` package
----------------------------------------------------------
GPT-2 splits text with::

    's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+

Python's standard ``re`` module has no ``\\p{L}`` (any letter) or ``\\p{N}`` (any number), so on
first use we build them: scan every code point once, keep those whose ``unicodedata.category``
starts with "L" or "N", and write each run of consecutive code points as one range (a-z, not 26
characters), which keeps each class to a few hundred ranges. ``\\s`` is spelled out as well: in
``re`` it means ``str.isspace()``, which also accepts the separators U+001C..U+001F, whereas the
regex engine behind tiktoken (Rust's) means Unicode's White_Space property, listed in
``_WHITE_SPACE``. The letter and number classes follow the Unicode version of this Python's
``unicodedata`` (``unicodedata.unidata_version``); characters assigned only in a later Unicode
version count as neither letters nor numbers here, so for those alone the split can differ from
tiktoken's.

Files: every tokenizer has ``save(directory)`` and ``load(directory)`` (tokenizer.json for characters and for
HFTokenizer; vocab.json + merges.txt for BPE), and ``load_tokenizer(directory)`` picks the class from what the
directory holds.
"""
from __future__ import annotations

import functools
import heapq
import json
import operator
import os
import re
import reprlib
import sys
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Set
from pathlib import Path
from typing import Union

from atomic_files import read_json, write_text

CHAR_TOKENIZER_FILE = "tokenizer.json"  # also the name of the `tokenizers` library's single-file format


class CharTokenizer:
    """Character-level tokenizer: token id i is the i-th character of ``chars``.

    Build one with ``CharTokenizer.from_text(text)`` (sorted distinct characters of the text, as
    nanoGPT's shakespeare_char does). Characters outside the vocabulary are an error at encode time
    unless ``unknown_token`` (itself a character of the vocabulary) is set; they then map to its id.
    ``to_dict``/``from_dict`` give a plain JSON-serializable form for checkpoints.
    """

    def __init__(self, chars: Iterable[str], unknown_token: str | None = None) -> None:
        """chars: the distinct characters, in id order; unknown_token: None or one of them."""
        if not isinstance(chars, Iterable):
            raise TypeError(f"chars must be a sequence of single characters, got {type(chars).__name__}")
        chars = list(chars)
        for char in chars:
            _check_single_character(char, "every vocabulary entry")
        if len(set(chars)) != len(chars):
            repeated = sorted(char for char, count in Counter(chars).items() if count > 1)
            raise ValueError(f"vocabulary characters must be distinct; repeated: {repeated!r}")
        if not chars:
            raise ValueError("the vocabulary is empty: at least one character is needed")
        if unknown_token is not None:
            _check_single_character(unknown_token, "unknown_token")
            if unknown_token not in chars:
                raise ValueError(f"unknown_token {unknown_token!r} is not in the vocabulary")
        self.chars = chars
        self.unknown_token = unknown_token
        self._char_to_id = {char: token_id for token_id, char in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str, unknown_token: str | None = None) -> CharTokenizer:
        """Vocabulary = sorted distinct characters of ``text`` (plus ``unknown_token``, if given)."""
        alphabet = set(_check_text(text))
        if unknown_token is not None:
            _check_single_character(unknown_token, "unknown_token")
            alphabet.add(unknown_token)
        return cls(sorted(alphabet), unknown_token)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        """str -> list of ids, one per character."""
        _check_text(text)
        char_to_id = self._char_to_id
        if self.unknown_token is not None:
            unknown_id = char_to_id[self.unknown_token]
            return [char_to_id.get(char, unknown_id) for char in text]
        try:
            return [char_to_id[char] for char in text]
        except KeyError:
            # Only on failure do we pay for a second pass, to say where the bad character is.
            position, char = next((i, c) for i, c in enumerate(text) if c not in char_to_id)
            raise ValueError(
                f"character {char!r} at position {position} is not in the vocabulary "
                f"(build the tokenizer with unknown_token=... to map such characters to one id)"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        """Ids (a list, tuple or iterator of ints, or a 1-D NumPy integer array) -> str."""
        return "".join(_look_up(self.chars, ids))

    def to_dict(self) -> dict:
        """Plain JSON-serializable description; ``from_dict`` rebuilds an identical tokenizer."""
        return {"type": "char", "chars": list(self.chars), "unknown_token": self.unknown_token}

    @classmethod
    def from_dict(cls, data: dict) -> CharTokenizer:
        """The tokenizer ``to_dict`` described."""
        if not isinstance(data, dict) or data.get("type") != "char":
            raise ValueError("expected a dict with 'type': 'char', as written by CharTokenizer.to_dict")
        if not isinstance(data.get("chars"), list):
            raise ValueError("the 'chars' entry must be a list of single characters")
        return cls(data["chars"], data.get("unknown_token"))

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``to_dict()`` as ``directory``/tokenizer.json (whole or not at all), creating the directory."""
        write_text(Path(directory) / CHAR_TOKENIZER_FILE, json.dumps(self.to_dict(), ensure_ascii=False))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> CharTokenizer:
        """Read what ``save(directory)`` wrote (checkpoints of every version hold the same tokenizer.json)."""
        path = Path(directory) / CHAR_TOKENIZER_FILE
        return cls._from_file_data(read_json(_existing_file(path)), path)

    @classmethod
    def _from_file_data(cls, data: object, path: Path) -> CharTokenizer:
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: not a character tokenizer ({error})") from None


def _look_up(table, ids):
    """[table[id] for id in ids]: the one place where both tokenizers check the ids they decode.

    ids: a list, tuple or iterator of ints (NumPy integers too), or a 1-D NumPy integer array.
    Anything else is refused rather than half-decoded: floats, bools, strings, None, nested or 2-D
    ids (TypeError or ValueError), and ids outside [0, len(table)) (ValueError; a negative one
    would otherwise index from the end).
    """
    # A str or bytes is iterable but holds no ids; a set or dict has no order to decode in.
    if isinstance(ids, (str, bytes, bytearray, Set, Mapping)) or not isinstance(ids, Iterable):
        raise TypeError(f"ids must be a sequence of integer token ids, got {type(ids).__name__}")
    if hasattr(getattr(ids, "dtype", None), "kind"):  # a NumPy array, checked whole; tolist() gives plain ints
        if ids.ndim != 1:
            raise ValueError(f"ids must be one-dimensional, got an array of shape {ids.shape}")
        if ids.dtype.kind not in "iu":
            raise TypeError(f"ids must be integers, got an array of dtype {ids.dtype}")
        ids = ids.tolist()
    pieces = []
    for position, token_id in enumerate(ids):
        index = _as_int(token_id)
        if index is None:
            raise TypeError(
                f"token id at position {position} is {token_id!r} ({type(token_id).__name__}); "
                f"ids must be a flat sequence of ints"
            )
        if not 0 <= index < len(table):
            raise ValueError(f"token id {index} at position {position} is outside the vocabulary [0, {len(table)})")
        pieces.append(table[index])
    return pieces


def _as_int(value):
    """``value`` as a Python int if it is an integer (int or NumPy integer, but not a bool), else None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _check_text(text):
    """Return ``text`` if it is a str; what encode and train accept."""
    if not isinstance(text, str):
        hint = " (decode bytes to str first)" if isinstance(text, (bytes, bytearray)) else ""
        raise TypeError(f"text must be a str, got {type(text).__name__}{hint}")
    return text


def _check_single_character(value, what):
    if not isinstance(value, str) or len(value) != 1:
        raise ValueError(f"{what} must be a single character, got {value!r}")


# ----------------------------------------------------------------------------------------------
# GPT-2 pre-tokenization

# Unicode's White_Space property (PropList.txt), which is what \s means to the Rust regex engine
# behind tiktoken. Written as the body of a character class.
_WHITE_SPACE = r"\t\n\x0b\x0c\r\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"


def _class_member(code_point):
    """Escape sequence for one code point inside an ``re`` character class."""
    if code_point < 0x100:
        return f"\\x{code_point:02x}"
    if code_point < 0x10000:
        return f"\\u{code_point:04x}"
    return f"\\U{code_point:08x}"


def _class_body(ranges):
    """[(first, last), ...] code point ranges -> the inside of a character class, e.g. 'a-zA-Z'."""
    parts = []
    for first, last in ranges:
        parts.append(_class_member(first) if first == last else f"{_class_member(first)}-{_class_member(last)}")
    return "".join(parts)


@functools.cache
def _category_ranges(max_code_point: int) -> dict[str, list[tuple[int, int]]]:
    """Unicode general categories as code point ranges up to ``max_code_point``, from ``unicodedata``.

    Keys are the two-letter categories ("Lu", "Nd", ...) and the one-letter major ones ("L", "N", ...); values
    are [(first, last), ...] runs of consecutive code points, so a class is a few hundred ranges, not
    thousands of characters. One pass over the code points, built once per argument.
    """
    runs = []  # (category, first, last), cut where the category changes
    run_category, run_start = None, 0
    for code_point in range(max_code_point + 1):
        category = unicodedata.category(chr(code_point))
        if category != run_category:
            if run_category is not None:
                runs.append((run_category, run_start, code_point - 1))
            run_category, run_start = category, code_point
    runs.append((run_category, run_start, max_code_point))
    ranges = defaultdict(list)
    for category, first, last in runs:
        ranges[category].append((first, last))
        major = ranges[category[0]]
        if major and major[-1][1] == first - 1:  # e.g. an "Lu" run followed by an "Ll" run: one "L" range
            major[-1] = (major[-1][0], last)
        else:
            major.append((first, last))
    return dict(ranges)


@functools.cache
def gpt2_split_regex(max_code_point: int = sys.maxunicode) -> re.Pattern:
    """GPT-2's pre-tokenization pattern compiled for ``re`` (built once per argument, then cached).

    The classes cover code points up to ``max_code_point``. ``re`` tests a class's code points
    beyond U+FFFF range by range, hundreds of them, so ``_split_words`` uses a pattern limited to
    U+FFFF, about four times faster, for text without such characters; the splits are the same.
    """
    categories = _category_ranges(max_code_point)
    letters, numbers, space = _class_body(categories["L"]), _class_body(categories["N"]), _WHITE_SPACE
    return re.compile(
        r"'s|'t|'re|'ve|'m|'ll|'d"
        f"| ?[{letters}]+| ?[{numbers}]+| ?[^{space}{letters}{numbers}]+"
        f"|[{space}]+(?![^{space}])|[{space}]+"
    )


_BEYOND_BMP = re.compile("[\U00010000-\U0010ffff]")


def _split_words(text):
    """Pre-tokenize ``text`` into GPT-2's words."""
    if _BEYOND_BMP.search(text) is None:
        return gpt2_split_regex(0xFFFF).findall(text)
    return gpt2_split_regex().findall(text)


@functools.cache
def gpt2_byte_to_char() -> list[str]:
    """GPT-2's table from the 256 byte values to 256 printable characters (list indexed by byte).

    Vocabulary and merges files store tokens as text. Bytes that are already printable, non-space
    Latin-1 characters stand for themselves; the other 68 (controls, space, DEL, NBSP, soft hyphen)
    are given the characters from U+0100 upward, in byte order. So b" " is "Ġ" and b"\\n" is "Ċ".
    """
    def printable(byte: int) -> bool:
        return ord("!") <= byte <= ord("~") or ord("¡") <= byte <= ord("¬") or ord("®") <= byte <= ord("ÿ")

    table, next_stand_in = [], 0x100
    for byte in range(256):
        if printable(byte):
            table.append(chr(byte))
        else:
            table.append(chr(next_stand_in))
            next_stand_in += 1
    return table


@functools.cache
def _char_to_byte():
    return {char: byte for byte, char in enumerate(gpt2_byte_to_char())}


def _token_to_text(token):
    """Token bytes -> their printable form in vocab.json / merges.txt."""
    byte_to_char = gpt2_byte_to_char()
    return "".join(byte_to_char[byte] for byte in token)


def _text_to_token(text):
    """Printable form -> token bytes, or None when ``text`` has a character outside the table."""
    char_to_byte = _char_to_byte()
    if not all(char in char_to_byte for char in text):
        return None
    return bytes(char_to_byte[char] for char in text)


def _without_lone_surrogates(text):
    """Make ``text`` encodable as UTF-8 the way tiktoken does.

    A Python str may hold surrogate code points (e.g. from broken JSON): a valid high+low pair
    becomes the character it stands for, and a lone one becomes U+FFFD.
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


# ----------------------------------------------------------------------------------------------
# Byte-level BPE

# encode remembers each word's ids, since text repeats words a lot. The cache is emptied when it
# holds this many words, and longer words (rare, and each one costly to keep) are not kept, so its
# memory stays bounded whatever the text.
_WORD_CACHE_LIMIT = 200_000
_CACHED_WORD_MAX_LENGTH = 64  # characters


class ByteBPETokenizer:
    """GPT-2 style byte-level BPE tokenizer.

    Three ways to get one:
      * ``ByteBPETokenizer.train(text, vocab_size)`` learns merges from a text (classmethod);
      * ``ByteBPETokenizer.from_files(vocab_path, merges_path)`` loads GPT-2's files
        (vocab.json + merges.txt, or the original encoder.json + vocab.bpe);
      * ``ByteBPETokenizer.load(directory)`` reads what ``save(directory)`` wrote (same formats).

    The constructor takes the tables directly:
      vocab: {token bytes: id} for the regular tokens, which must include all 256 single bytes;
      merges: [(left bytes, right bytes), ...], earliest (highest priority) first; each side and
        the joined result must be regular tokens;
      special_tokens: {text: id}, e.g. {"<|endoftext|>": 50256}; never produced by merges.
    Regular and special ids together must be exactly 0 .. vocab_size - 1.
    """

    def __init__(self, vocab: Mapping[bytes, int], merges: Iterable[tuple[bytes, bytes]],
                 special_tokens: Mapping[str, int]) -> None:
        vocab, merges, special_tokens = dict(vocab), list(merges), dict(special_tokens)
        missing_bytes = [byte for byte in range(256) if bytes([byte]) not in vocab]
        if missing_bytes:
            raise ValueError(f"the vocabulary lacks {len(missing_bytes)} single-byte tokens, e.g. {missing_bytes[0]}")
        merge_ranks = _merge_ranks(merges, vocab, "the vocabulary")
        for text in special_tokens:
            if not isinstance(text, str) or not text:
                raise ValueError(f"special tokens must be non-empty strings, got {text!r}")
            if _text_to_token(text) in vocab:
                # vocab.json keys both kinds of token by text, so the two could not be told apart.
                raise ValueError(f"special token {text!r} is also the printable form of a regular token")
        ids = list(vocab.values()) + list(special_tokens.values())
        not_ints = [token_id for token_id in ids if _as_int(token_id) is None]
        if not_ints:
            raise TypeError(f"token ids must be ints, got {not_ints[0]!r}")
        ids.sort()
        if ids != list(range(len(ids))):
            counts = Counter(ids)
            repeated = [token_id for token_id, count in counts.items() if count > 1]
            problem = (f"id {repeated[0]} is used {counts[repeated[0]]} times" if repeated
                       else f"id {next(i for i in ids if not 0 <= i < len(ids))} is outside that range")
            raise ValueError(f"token ids must be 0 .. {len(ids) - 1}, each used exactly once: {problem}")

        self._vocab = vocab
        self._merges = merges
        self._special_tokens = special_tokens
        self._merge_ranks = merge_ranks
        self._byte_ids = [vocab[bytes([byte])] for byte in range(256)]
        self._id_to_bytes = [b""] * len(ids)
        for token, token_id in vocab.items():
            self._id_to_bytes[token_id] = token
        for text, token_id in special_tokens.items():
            self._id_to_bytes[token_id] = text.encode("utf-8")
        self._word_cache = {}  # pre-tokenized word -> its ids; text repeats words a lot

    # ------------------------------------------------------------------ training

    @classmethod
    def train(cls, text: str, vocab_size: int, special_tokens: Iterable[str] = ("<|endoftext|>",)) -> ByteBPETokenizer:
        """Learn merges from ``text`` until there are ``vocab_size`` tokens; returns a tokenizer.

        Ids 0..255 are the single bytes, new tokens follow in the order they were learned, and the
        special tokens take the last ids. Occurrences of the special tokens in ``text`` are cut out
        before training. Each step merges the most frequent adjacent pair within pre-tokenized
        words (pairs never span two words); ties go to the pair with the lowest ids.

        Instead of recounting all pairs after every merge, we keep an index from each pair to the
        words containing it, so a merge only revisits the words it changes, and a heap of counts
        to find the most frequent pair.
        """
        _check_text(text)
        if _as_int(vocab_size) is None:
            raise TypeError(f"vocab_size must be an int, got {vocab_size!r} ({type(vocab_size).__name__})")
        vocab_size = _as_int(vocab_size)
        if isinstance(special_tokens, str) or not isinstance(special_tokens, Iterable):
            raise TypeError(f"special_tokens must be a sequence of strings, e.g. ('<|endoftext|>',), "
                            f"got {special_tokens!r}")
        special_tokens = list(special_tokens)
        for special in special_tokens:
            if not isinstance(special, str) or not special:
                raise ValueError(f"special tokens must be non-empty strings, got {special!r}")
        if len(set(special_tokens)) != len(special_tokens):
            raise ValueError(f"special tokens must be distinct, got {special_tokens!r}")
        n_regular = vocab_size - len(special_tokens)
        if n_regular < 256:
            raise ValueError(
                f"vocab_size {vocab_size} is too small: 256 byte tokens + {len(special_tokens)} special tokens "
                f"need at least {256 + len(special_tokens)}"
            )
        # A learned token whose printable form equals a special token could not be saved in vocab.json.
        forbidden_tokens = {_text_to_token(special) for special in special_tokens} - {None}
        if any(len(token) == 1 for token in forbidden_tokens):
            raise ValueError("a special token may not be the printable form of a single byte")

        text = _without_lone_surrogates(text)
        chunks = _split_on_specials(text, special_tokens) if special_tokens else [text]
        word_counts = Counter(word for chunk in chunks for word in _split_words(chunk))
        words = [list(word.encode("utf-8")) for word in word_counts]  # byte ids 0..255
        word_freqs = list(word_counts.values())
        # Each merge shortens some word by a symbol, so this many merges at most can be learned:
        # a vocab_size beyond that is refused now rather than after learning all of them.
        most_merges = sum(len(word) - 1 for word in words)
        if 256 + most_merges < n_regular:
            raise ValueError(
                f"the text is too small for vocab_size {vocab_size}: its distinct words allow at most "
                f"{most_merges} merges, so at most {256 + most_merges + len(special_tokens)} tokens"
            )

        pair_counts = defaultdict(int)  # pair -> occurrences in the text
        pair_words = defaultdict(set)  # pair -> indices of the words containing it
        for index, word in enumerate(words):
            for pair in zip(word, word[1:]):
                pair_counts[pair] += word_freqs[index]
                pair_words[pair].add(index)
        # Max-heap of (-count, pair). Entries go stale as counts change; a stale entry is fixed
        # when it reaches the top. Every pair always has an entry with at least its current count.
        heap = [(-count, pair) for pair, count in pair_counts.items()]
        heapq.heapify(heap)

        vocab = {bytes([byte]): byte for byte in range(256)}
        id_to_bytes = [bytes([byte]) for byte in range(256)]
        merges = []
        while len(id_to_bytes) < n_regular:
            pair = _pop_most_frequent(heap, pair_counts)
            if pair is None:
                raise ValueError(
                    f"the text is too small for vocab_size {vocab_size}: it ran out of pairs to merge "
                    f"at {len(id_to_bytes) + len(special_tokens)} tokens"
                )
            token = id_to_bytes[pair[0]] + id_to_bytes[pair[1]]
            if token in forbidden_tokens:
                continue
            if token not in vocab:  # rarely, two different pairs spell the same bytes
                vocab[token] = len(id_to_bytes)
                id_to_bytes.append(token)
            merges.append((id_to_bytes[pair[0]], id_to_bytes[pair[1]]))
            _apply_merge(pair, vocab[token], words, word_freqs, pair_counts, pair_words, heap)

        specials = {special: n_regular + i for i, special in enumerate(special_tokens)}
        return cls(vocab, merges, specials)

    # ------------------------------------------------------------------ encoding

    @property
    def vocab_size(self) -> int:
        return len(self._id_to_bytes)

    @property
    def merges(self) -> list[tuple[bytes, bytes]]:
        """[(left bytes, right bytes), ...] in priority order (a copy)."""
        return list(self._merges)

    @property
    def special_tokens(self) -> dict[str, int]:
        """{special token text: id} (a copy)."""
        return dict(self._special_tokens)

    @property
    def eot_token(self) -> int | None:
        """Id of "<|endoftext|>" (50256 for GPT-2), or None if this tokenizer has no such token."""
        return self._special_tokens.get("<|endoftext|>")

    def encode(self, text: str, allowed_special: str | Iterable[str] = "none") -> list[int]:
        """str -> list of ids.

        allowed_special: "none" (the default: special-token text is encoded as ordinary text, so
        user text cannot smuggle in control tokens), "all", or a set of special token strings that
        become their single ids wherever they appear.
        """
        text = _without_lone_surrogates(_check_text(text))
        specials = self._allowed_specials(allowed_special)
        ids = []
        if not specials:
            self._encode_ordinary(text, ids)
            return ids
        start = 0
        for match in _special_regex(frozenset(specials)).finditer(text):
            self._encode_ordinary(text[start : match.start()], ids)
            ids.append(self._special_tokens[match.group()])
            start = match.end()
        self._encode_ordinary(text[start:], ids)
        return ids

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Ids -> the raw bytes they stand for (a token may hold part of a UTF-8 character)."""
        return b"".join(_look_up(self._id_to_bytes, ids))

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> str. Byte sequences that are not valid UTF-8 become U+FFFD, as in GPT-2."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def _allowed_specials(self, allowed_special):
        if isinstance(allowed_special, str):
            if allowed_special == "all":
                return set(self._special_tokens)
            if allowed_special == "none":
                return set()
            raise ValueError(f"allowed_special must be 'all', 'none' or a set of strings, got {allowed_special!r}")
        allowed = list(allowed_special) if isinstance(allowed_special, Iterable) else [None]
        if not all(isinstance(text, str) for text in allowed):
            raise TypeError(f"allowed_special must be 'all', 'none' or a set of strings, got {allowed_special!r}")
        allowed = set(allowed)
        unknown = allowed - set(self._special_tokens)
        if unknown:
            raise ValueError(f"not special tokens of this tokenizer: {sorted(unknown)!r}")
        return allowed

    def _encode_ordinary(self, text, ids):
        """Append the ids of ``text`` (no special tokens) to ``ids``."""
        for word in _split_words(text):
            ids.extend(_word_ids(self._word_cache, word, self._merge_word))

    def _merge_word(self, word):
        """One word's UTF-8 bytes -> ids, as GPT-2 does it (``_apply_merges`` in rounds)."""
        return _apply_merges([self._byte_ids[byte] for byte in word.encode("utf-8")], self._merge_ranks,
                             in_rounds=True)

    # ------------------------------------------------------------------ files

    @classmethod
    def from_files(cls, vocab_path: str | os.PathLike, merges_path: str | os.PathLike) -> ByteBPETokenizer:
        """Load GPT-2's files: vocab.json + merges.txt (Hugging Face names) or encoder.json +
        vocab.bpe (OpenAI's names for the same content).

        vocab.json maps each token's printable form (see ``gpt2_byte_to_char``) to its id.
        merges.txt has a "#version" first line, then one merge per line: the two parts' printable
        forms separated by a space. Entries of vocab.json that are neither a single byte nor the
        result of a merge (GPT-2: only "<|endoftext|>") are special tokens.
        """
        vocab_path, merges_path = Path(vocab_path), Path(merges_path)
        return cls._from_tables(read_json(_existing_file(vocab_path)), _read_text(merges_path).splitlines(),
                                vocab_path, merges_path)

    @classmethod
    def _from_tables(cls, vocab_json, merge_lines, vocab_source, merges_source):
        """Build from the two tables in GPT-2's text forms; the sources name them in error messages."""
        if not isinstance(vocab_json, dict):
            raise ValueError(f"{vocab_source}: expected a JSON object mapping token text to id")
        for text, token_id in vocab_json.items():
            if not isinstance(token_id, int) or isinstance(token_id, bool):
                raise ValueError(f"{vocab_source}: the id of {text!r} is {token_id!r}, not an integer")
        if not isinstance(merge_lines, list) or not all(isinstance(line, str) for line in merge_lines):
            raise ValueError(f"{merges_source}: expected lines of text")

        merges = []
        for line_number, line in enumerate(merge_lines, start=1):
            if not line.strip() or (line_number == 1 and line.startswith("#version")):
                continue
            parts = line.split(" ")
            tokens = [_text_to_token(part) for part in parts]
            if len(parts) != 2 or not all(tokens):
                raise ValueError(
                    f"{merges_source}, line {line_number}: expected two tokens in GPT-2's byte alphabet "
                    f"separated by one space, got {reprlib.repr(line)}"
                )
            merges.append(tuple(tokens))

        regular = {bytes([byte]) for byte in range(256)} | {left + right for left, right in merges}
        vocab, special_tokens = {}, {}
        for text, token_id in vocab_json.items():
            token = _text_to_token(text)
            if token in regular:
                vocab[token] = token_id
            else:
                special_tokens[text] = token_id
        sources = vocab_source if vocab_source == merges_source else f"{vocab_source} and {merges_source}"
        try:
            return cls(vocab, merges, special_tokens)
        except ValueError as error:
            raise ValueError(f"{sources} do not form a valid tokenizer: {error}") from None

    @classmethod
    def from_tokenizer_json(cls, path: str | os.PathLike) -> ByteBPETokenizer:
        """Load the single-file format of the `tokenizers` library (tokenizer.json, which current
        transformers saves for GPT-2 instead of vocab.json + merges.txt): its "model" holds the same
        vocabulary and merges (each merge a "left right" string or a [left, right] pair), and its
        "added_tokens" the special tokens."""
        path = Path(path)
        return cls._from_tokenizer_json_data(read_json(_existing_file(path)), path)

    @classmethod
    def _from_tokenizer_json_data(cls, data: object, path: Path) -> ByteBPETokenizer:
        """from_tokenizer_json once the file is read: ``data`` is its JSON value."""
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object at the top level, got {reprlib.repr(data)}")
        if not _describes_gpt2(data):
            raise ValueError(f"{path}: its normalizer, pre_tokenizer or model options are not GPT-2's; load it with "
                             "tokenizer.HFTokenizer.from_tokenizer_json or tokenizer.load_tokenizer")
        model = data.get("model")
        if not isinstance(model, dict) or model.get("type") != "BPE":
            raise ValueError(f"{path}: expected a BPE tokenizer with a 'model' holding 'vocab' and 'merges', "
                             f"got 'model': {reprlib.repr(model)}")
        vocab, merges = model.get("vocab"), model.get("merges")
        if not isinstance(vocab, dict):
            raise ValueError(f"{path}: model.vocab must be an object mapping token text to id, "
                             f"got {reprlib.repr(vocab)}")
        if not isinstance(merges, list):
            raise ValueError(f"{path}: model.merges must be a list, got {reprlib.repr(merges)}")
        merge_lines = []
        for index, merge in enumerate(merges):
            if isinstance(merge, list) and len(merge) == 2 and all(isinstance(part, str) for part in merge):
                merge = " ".join(merge)
            if not isinstance(merge, str):
                raise ValueError(f"{path}: merge {index} is {reprlib.repr(merge)}; expected a 'left right' string "
                                 f"or a [left, right] pair of strings")
            merge_lines.append(merge)  # its split is checked with GPT-2's byte alphabet, by line, in _from_tables
        vocab = dict(vocab)
        for _, content, token_id in _added_tokens(data.get("added_tokens", []), path):
            if vocab.setdefault(content, token_id) != token_id:
                raise ValueError(f"{path}: added token {content!r} has id {token_id}, but model.vocab gives it "
                                 f"{reprlib.repr(vocab[content])}")
        return cls._from_tables(vocab, merge_lines, path, f"{path} (model.merges)")

    def to_dict(self) -> dict:
        """The contents of vocab.json and merges.txt as plain JSON, for checkpoints and token caches."""
        vocab_json = {_token_to_text(token): token_id for token, token_id in self._vocab.items()}
        vocab_json.update(self._special_tokens)
        return {"type": "byte_bpe", "vocab": dict(sorted(vocab_json.items(), key=lambda item: item[1])),
                "merges": [f"{_token_to_text(left)} {_token_to_text(right)}" for left, right in self._merges]}

    @classmethod
    def from_dict(cls, data: dict) -> ByteBPETokenizer:
        """The tokenizer ``to_dict`` described."""
        if not isinstance(data, dict) or data.get("type") != "byte_bpe":
            raise ValueError("expected a dict with 'type': 'byte_bpe', as written by ByteBPETokenizer.to_dict")
        return cls._from_tables(data.get("vocab"), data.get("merges"), "the 'vocab' entry", "the 'merges' entry")

    def save(self, directory: str | os.PathLike) -> None:
        """Write vocab.json and merges.txt (GPT-2's formats) into ``directory``, creating it; each file whole or
        not at all."""
        directory, tables = Path(directory), self.to_dict()
        write_text(directory / "vocab.json", json.dumps(tables["vocab"], ensure_ascii=False))
        write_text(directory / "merges.txt", "\n".join(["#version: 0.2", *tables["merges"]]) + "\n")

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ByteBPETokenizer:
        """Read a tokenizer written by ``save`` (or any directory holding GPT-2's two files)."""
        directory = Path(directory)
        return cls.from_files(directory / "vocab.json", directory / "merges.txt")


def _word_ids(cache, word, merge_word):
    """``merge_word(word)``, remembered in ``cache``: text repeats words a lot. The cache is emptied when full
    and keeps no long words, so its memory stays bounded whatever the text."""
    word_ids = cache.get(word)
    if word_ids is None:
        word_ids = merge_word(word)
        if len(word) <= _CACHED_WORD_MAX_LENGTH:
            if len(cache) >= _WORD_CACHE_LIMIT:
                cache.clear()
            cache[word] = word_ids
    return word_ids


def _apply_merges(ids, merge_ranks, in_rounds):
    """Symbol ids -> ids after byte-pair merging. merge_ranks: {(left id, right id): (rank, joined id)}.

    in_rounds=True is GPT-2's rule: take the applicable merge of lowest rank (the earliest learned), apply it
    at each of its occurrences from left to right ("aaa" -> "aa a"), and repeat until none applies.
    in_rounds=False is the `tokenizers` library's: always apply the single lowest-rank, leftmost pair next.
    The two differ only for a merges table in an order no training produces (see ``round_rank`` below).

    Rescanning the word for each merge would cost O(n^2) for n symbols. Instead the symbols form a
    doubly linked list (indexed by their first position; a merged symbol keeps its left part's
    index) and a heap holds (rank, position) for each adjacent pair that has a merge, so
    the lowest rank, leftmost first, is always on top: O(n log n). A merge changes only the pairs
    on either side of it; their new entries are pushed, and entries made stale by a merge are
    skipped when they surface (lazy invalidation).
    """
    ids = list(ids)  # a merged-away symbol's id becomes -1
    n = len(ids)
    following = list(range(1, n + 1))  # index of the next symbol; n past the end
    preceding = list(range(-1, n - 1))  # index of the previous symbol; -1 before the start
    heap = [(merge_ranks[pair][0], left) for left, pair in enumerate(zip(ids, ids[1:])) if pair in merge_ranks]
    heapq.heapify(heap)
    # GPT-2 applies one merge everywhere before choosing the next. A merge's result normally
    # takes part only in later (higher-rank) merges; a pair of lower rank than the current one,
    # which only a merges table in an unlearned order can create, waits for the round to end.
    round_rank, deferred = -1, []

    def queue_pair(left: int, right: int) -> None:
        merge = merge_ranks.get((ids[left], ids[right]))
        if merge is not None:
            entry = (merge[0], left)
            if merge[0] < round_rank:
                deferred.append(entry)
            else:
                heapq.heappush(heap, entry)

    while heap or deferred:
        if deferred and (not heap or heap[0][0] != round_rank):
            for entry in deferred:
                heapq.heappush(heap, entry)
            deferred.clear()
        rank, left = heapq.heappop(heap)
        right = following[left]
        if ids[left] < 0 or right == n:
            continue  # stale: this symbol was merged into its left neighbour, or is now the last
        merge = merge_ranks.get((ids[left], ids[right]))
        if merge is None or merge[0] != rank:
            continue  # stale: one side of the pair has been merged since it was queued
        if in_rounds:
            round_rank = rank
        ids[left], ids[right] = merge[1], -1
        after = following[right]
        following[left] = after
        if after < n:
            preceding[after] = left
            queue_pair(left, after)
        if preceding[left] >= 0:
            queue_pair(preceding[left], left)
    return [token_id for token_id in ids if token_id >= 0]


def _added_tokens(added_tokens, source):
    """The entries of a tokenizer.json's "added_tokens" list as (entry, content, id); ValueError naming
    ``source`` for a list or entry of the wrong form."""
    if not isinstance(added_tokens, list):
        raise ValueError(f"{source}: added_tokens must be a list, got {reprlib.repr(added_tokens)}")
    for index, added in enumerate(added_tokens):
        content, token_id = (added.get("content"), added.get("id")) if isinstance(added, dict) else (None, None)
        if not isinstance(content, str) or not content or type(token_id) is not int:
            raise ValueError(f"{source}: added token {index} must be an object with a non-empty string 'content' "
                             f"and an integer 'id', got {reprlib.repr(added)}")
        yield added, content, token_id


def _describes_gpt2(data):
    """Whether a tokenizer.json's pipeline is GPT-2's: no normalizer, the ByteLevel pre-tokenizer with GPT-2's
    pattern (or none given, as in minimal files), and a plain BPE model. Anything else is an HFTokenizer."""
    pre_tokenizer = data.get("pre_tokenizer", {"type": "ByteLevel"})
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    return (data.get("normalizer") is None and _type_of(pre_tokenizer) == "ByteLevel"
            and pre_tokenizer.get("add_prefix_space", False) is False and pre_tokenizer.get("use_regex", True) is True
            and not any(model.get(option) for option in ("byte_fallback", "ignore_merges", "dropout")))


def _pop_most_frequent(heap, pair_counts):
    """Pop the pair with the highest current count (lowest ids on ties); None when none is left."""
    while heap:
        negative_count, pair = heapq.heappop(heap)
        count = pair_counts.get(pair, 0)
        if count == -negative_count:
            return pair
        if count > 0:  # the entry was stale: the pair is rarer now, so queue it at its real count
            heapq.heappush(heap, (-count, pair))
    return None


def _merge_pair(ids, pair, new_id):
    """Replace every occurrence of ``pair`` in ``ids``, scanning left to right, by ``new_id``."""
    first, second = pair
    merged, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == first and ids[i + 1] == second:
            merged.append(new_id)
            i += 2
        else:
            merged.append(ids[i])
            i += 1
    return merged


def _apply_merge(pair, new_id, words, word_freqs, pair_counts, pair_words, heap):
    """Merge ``pair`` into ``new_id`` in every word containing it, updating counts and index."""
    grown = set()
    for index in list(pair_words[pair]):
        old_word = words[index]
        new_word = _merge_pair(old_word, pair, new_id)
        words[index] = new_word
        old_pairs, new_pairs = Counter(zip(old_word, old_word[1:])), Counter(zip(new_word, new_word[1:]))
        for changed in old_pairs.keys() | new_pairs.keys():
            change = (new_pairs[changed] - old_pairs[changed]) * word_freqs[index]
            if change == 0:
                continue
            pair_counts[changed] += change
            if pair_counts[changed] == 0:
                del pair_counts[changed]
            if change > 0:
                grown.add(changed)
            if new_pairs[changed] == 0:
                pair_words[changed].discard(index)
            else:
                pair_words[changed].add(index)
    del pair_words[pair]
    for grown_pair in grown:
        if grown_pair in pair_counts:
            heapq.heappush(heap, (-pair_counts[grown_pair], grown_pair))


def _split_on_specials(text, special_tokens):
    """The pieces of ``text`` between occurrences of the special tokens."""
    return _special_regex(frozenset(special_tokens)).split(text)


@functools.cache
def _special_regex(special_tokens):
    # Longest first, so that a special token containing another one wins where both match.
    ordered = sorted(special_tokens, key=lambda token: (-len(token), token))
    return re.compile("|".join(re.escape(token) for token in ordered))


# ----------------------------------------------------------------------------------------------
# Hugging Face tokenizer.json pipelines (Llama, Mistral, Qwen2, SmolLM)
#
# The `tokenizers` library runs text through: added tokens (cut out first) -> normalizer -> pre-tokenizers
# -> model (BPE) -> post-processor, and ids back through a decoder. HFTokenizer reads that description from
# tokenizer.json and reproduces each supported step exactly; any other component is refused by name,
# because an approximation would load silently and encode differently from the model's training.

_METASPACE = "\u2581"  # "▁", SentencePiece's visible space


def _refuse(source, what, value, supported):
    raise ValueError(f"{source}: unsupported {what} {reprlib.repr(value)}; supported: {supported}")


def _type_of(component):
    return component.get("type") if isinstance(component, dict) else None


def _flatten(component, key, source):
    """A Sequence component -> its parts (the list under ``key``); any other component -> [it]; null -> []."""
    if component is None:
        return []
    if _type_of(component) == "Sequence":
        parts = component.get(key)
        if not isinstance(parts, list):
            raise ValueError(f"{source}: a Sequence needs a list under {key!r}, got {reprlib.repr(component)}")
        return [part for inner in parts for part in _flatten(inner, key, source)]
    return [component]


def _string_pattern(component, source):
    """The literal of a {"String": ...} pattern; a {"Regex": ...} one is refused (Replace, Split(String))."""
    pattern = component.get("pattern")
    if not (isinstance(pattern, dict) and list(pattern) == ["String"] and isinstance(pattern["String"], str)
            and pattern["String"]):
        _refuse(source, f"{component.get('type')} pattern", pattern, 'a non-empty {"String": ...}')
    return pattern["String"]


# ---- the regex of a Split pre-tokenizer, from Oniguruma's dialect into Python's `re`

_SUPPORTED_REGEX = (r"literals, escaped punctuation, \r \n \t \f \v \xHH \x{H..}, \s \S, \p{X} / \P{X} for the "
                    r"general categories L M N P S Z and their subcategories, [...] and [^...] classes, "
                    r"alternation, groups ( ) (?: ) (?i: ) (?= ) (?! ) (?<= ) (?<! ) (?> ), quantifiers "
                    r"* + ? {n,m} with lazy ? or possessive + forms, and '.'")
_REGEX_GROUP_OPENERS = ("(?:", "(?i:", "(?=", "(?!", "(?<=", "(?<!", "(?>")


@functools.cache
def _multi_character_folds():
    """Strings that one character case-folds into ("ss" for "ß", "st" for "ﬆ"): a case-insensitive group
    spelling one matches that character in Oniguruma but not in Python's `re` (simple folding only)."""
    return frozenset(fold for fold in (chr(code_point).casefold() for code_point in range(sys.maxunicode + 1))
                     if len(fold) > 1)


@functools.cache
def _split_regex(pattern, max_code_point):
    """An Oniguruma pattern (what tokenizers' Split uses) -> the same pattern for Python's `re` (cached).

    \\p{L} and friends become classes built from ``unicodedata`` (as for GPT-2's pattern), \\s becomes Unicode's
    White_Space (Oniguruma's \\s), and the rest passes through where both engines agree. Anything whose meaning
    differs or is not checked here (^ and $, which are line anchors in Oniguruma; {n,m}+, which Oniguruma's Ruby
    syntax reads as a repeated interval and Python as possessive; \\d, \\w, \\b, named groups, nested classes)
    raises ValueError naming it.
    """
    categories = _category_ranges(max_code_point)
    out, position, in_class, class_start = [], 0, False, 0
    case_insensitive_depth, depth, literal_run = None, 0, []

    def refuse(construct):
        raise ValueError(f"the Split regex {pattern!r} uses {construct} at position {position}, which this "
                         f"tokenizer does not translate; supported: {_SUPPORTED_REGEX}")

    def category_body(name):
        if not (len(name) in (1, 2) and name[0] in "LMNPSZ" and name in categories):
            refuse(f"the property \\p{{{name}}}")
        return _class_body(categories[name])

    while position < len(pattern):
        char = pattern[position]
        if char == "\\":
            escape = pattern[position + 1 : position + 2]
            if escape in ("p", "P"):
                match = re.match(r"\{\^?([A-Za-z]+)\}|([A-Za-z])", pattern[position + 2 :])
                if match is None:
                    refuse("a malformed \\p")
                negated = (escape == "P") != match.group(0).startswith("{^")
                body = category_body(match.group(1) or match.group(2))
                if in_class and negated:
                    refuse("a negated property inside a class")
                out.append(body if in_class else f"[{'^' if negated else ''}{body}]")
                position += 2 + match.end()
                continue
            if escape == "s":
                out.append(_WHITE_SPACE if in_class else f"[{_WHITE_SPACE}]")
            elif escape == "S" and not in_class:
                out.append(f"[^{_WHITE_SPACE}]")
            elif escape in ("r", "n", "t", "f", "v"):
                out.append("\\" + escape)
                literal_run.append(escape)
            elif escape == "x":
                match = re.match(r"\{([0-9A-Fa-f]{1,6})\}|([0-9A-Fa-f]{2})", pattern[position + 2 :])
                if match is None or int(match.group(1) or match.group(2), 16) > sys.maxunicode:
                    refuse("a malformed \\x escape")
                out.append(_class_member(int(match.group(1) or match.group(2), 16)))
                position += 2 + match.end()
                continue
            elif escape and not escape.isalnum() and escape.isascii():
                out.append("\\" + escape)
                literal_run.append(escape)
            else:
                refuse(f"the escape \\{escape}")
            position += 2
            continue
        if in_class:
            if char == "[" or pattern.startswith("&&", position):
                refuse("a nested class or class operation")
            if char == "]" and position > class_start:
                in_class = False
            out.append(char)
            position += 1
            continue
        if char == "[":
            in_class = True
            class_start = position + 1 + (pattern[position + 1 : position + 2] == "^")
            if pattern[class_start : class_start + 1] == "]":
                refuse("a class starting with ]")
            out.append(pattern[position:class_start])
            position = class_start
            continue
        if char == "(":
            opener = next((o for o in _REGEX_GROUP_OPENERS if pattern.startswith(o, position)), None)
            if opener is None and pattern.startswith("(?", position):
                refuse(f"the group {pattern[position:position + 4]!r}...")
            opener = opener or "("
            depth += 1
            if opener == "(?i:" and case_insensitive_depth is None:
                case_insensitive_depth = depth
            out.append(opener)
            position += len(opener)
            continue
        if char == ")":
            if case_insensitive_depth == depth:
                case_insensitive_depth = None
            depth -= 1
        if char in "^$":
            refuse(f"the anchor {char!r}")
        if char == "+" and out and out[-1] == "}":  # a "}" that no escape consumed closes an interval
            refuse("'{n,m}+'")
        if case_insensitive_depth is not None:
            literal_run.append(char)
            if any(fold in "".join(literal_run).casefold() for fold in _multi_character_folds()):
                refuse("a case-insensitive group spelling a multi-character case folding")
        else:
            literal_run.clear()
        out.append(char)
        position += 1
    if in_class:
        refuse("an unterminated class")
    try:
        return re.compile("".join(out))
    except re.error as error:
        raise ValueError(f"the Split regex {pattern!r} is not a valid pattern ({error})") from None


def _split_isolated(piece, regex):
    """The `tokenizers` "Isolated" split: every match and every stretch between matches is a piece (empty
    ones dropped)."""
    pieces, start = [], 0
    for match in regex.finditer(piece):
        if match.start() > start:
            pieces.append(piece[start : match.start()])
        if match.end() > match.start():
            pieces.append(match.group())
        start = match.end()
    if start < len(piece):
        pieces.append(piece[start:])
    return pieces


class HFTokenizer:
    """A Hugging Face tokenizer.json with a BPE model, encoding and decoding exactly as the `tokenizers`
    library does (checked against it in tests/test_tokenizer_hf.py). Two families are supported:

    * byte-level BPE with its own split pattern (Llama 3, Qwen2, SmolLM): pre_tokenizer
      Sequence[Split(Regex), ByteLevel(use_regex=false)] or Sequence[Digits, ByteLevel], an optional NFC
      normalizer, decoder ByteLevel;
    * BPE over "▁"-marked text with byte fallback (Llama 2, Mistral, TinyLlama): normalizer
      Sequence[Prepend("▁"), Replace(" ", "▁")] or pre_tokenizer Metaspace, ``<0xNN>`` tokens for characters
      outside the vocabulary, decoder Sequence[Replace("▁", " "), ByteFallback, Fuse, Strip(" ", 1, 0)].

    Added tokens (special or not) are cut out of the text before anything else, wherever they appear, as the
    library does (so, unlike ``ByteBPETokenizer.encode``, text can spell a special token). ``encode`` adds what
    a TemplateProcessing post-processor adds (Llama's leading <s>) unless ``add_special_tokens=False``.
    Build one with ``HFTokenizer.from_tokenizer_json(path)`` or ``tokenizer.load_tokenizer(directory)``.
    """

    def __init__(self, data: dict, source: str = "tokenizer.json") -> None:
        """data: the parsed tokenizer.json; source names it in error messages."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a JSON object at the top level, got {reprlib.repr(data)}")
        for key in ("truncation", "padding"):
            if data.get(key) is not None:
                _refuse(source, key, data[key], "null (ids are never truncated or padded here)")
        self._data = data
        self._vocab = self._read_model(data.get("model"), source)
        self._normalizers = [self._read_normalizer(part, source)
                             for part in _flatten(data.get("normalizer"), "normalizers", source)]
        self._read_added_tokens(data.get("added_tokens", []), source)
        self._pre_tokenizers = [self._read_pre_tokenizer(part, source)
                                for part in _flatten(data.get("pre_tokenizer"), "pretokenizers", source)]
        self._decoders = [self._read_decoder(part, source)
                          for part in _flatten(data.get("decoder"), "decoders", source)]
        self._prefix_ids, self._suffix_ids = self._read_post_processor(data.get("post_processor"), source)
        self._word_cache = {}  # pre-tokenized word -> its ids

    # ------------------------------------------------------------------ reading tokenizer.json

    def _read_model(self, model, source):
        if _type_of(model) != "BPE":
            _refuse(source, "model", _type_of(model) if isinstance(model, dict) else model, "BPE")
        for key in ("dropout", "continuing_subword_prefix", "end_of_word_suffix"):
            if model.get(key) not in (None, ""):
                _refuse(source, f"model.{key}", model[key], "null")
        vocab, merges = model.get("vocab"), model.get("merges")
        if not isinstance(vocab, dict) or not all(type(token_id) is int for token_id in vocab.values()):
            raise ValueError(f"{source}: model.vocab must be an object mapping token text to integer ids")
        if not isinstance(merges, list):
            raise ValueError(f"{source}: model.merges must be a list, got {reprlib.repr(merges)}")
        self._merge_ranks = _merge_ranks([_merge_parts(merge, rank, source) for rank, merge in enumerate(merges)],
                                         vocab, "model.vocab", prefix=f"{source}: ")
        self._ignore_merges = model.get("ignore_merges", False) is True
        self._fuse_unk = model.get("fuse_unk", False) is True
        unk_token = model.get("unk_token")
        if unk_token is not None and unk_token not in vocab:
            raise ValueError(f"{source}: model.unk_token {unk_token!r} is not in model.vocab")
        self._unk_id = None if unk_token is None else vocab[unk_token]
        self._byte_fallback_ids = None
        if model.get("byte_fallback", False) is True:
            names = [f"<0x{byte:02X}>" for byte in range(256)]
            missing = [name for name in names if name not in vocab]
            if missing:
                raise ValueError(f"{source}: model.byte_fallback needs the 256 byte tokens <0x00> .. <0xFF> in "
                                 f"model.vocab; {len(missing)} are missing, e.g. {missing[0]}")
            self._byte_fallback_ids = [vocab[name] for name in names]
        return dict(vocab)

    def _read_added_tokens(self, added_tokens, source):
        self._added, self._normalized_added, self._special = {}, {}, set()
        defaults = {"single_word": False, "lstrip": False, "rstrip": False}
        for added, content, token_id in _added_tokens(added_tokens, source):
            for flag, default in defaults.items():
                if added.get(flag, default) is not default:
                    _refuse(source, f"{flag!r} of added token {content!r}", added[flag], default)
            if self._vocab.setdefault(content, token_id) != token_id:
                raise ValueError(f"{source}: added token {content!r} has id {token_id}, but model.vocab gives it "
                                 f"{self._vocab[content]}")
            special = added.get("special", False) is True
            # The library's default: special tokens match the raw text, others match their normalized form in
            # the normalized text.
            if added.get("normalized", not special) is True:
                self._normalized_added[self._normalize(content)] = token_id
            else:
                self._added[content] = token_id
            if special:
                self._special.add(content)
        # What encode cuts out of the raw text, and out of each normalized piece: compiled once here.
        self._added_regex = _special_regex(frozenset(self._added)) if self._added else None
        self._normalized_added_regex = (_special_regex(frozenset(self._normalized_added))
                                        if self._normalized_added else None)
        self._id_to_token = [None] * len(self._vocab)
        for token, token_id in self._vocab.items():
            if not 0 <= token_id < len(self._id_to_token) or self._id_to_token[token_id] is not None:
                raise ValueError(f"{source}: token ids must be 0 .. {len(self._vocab) - 1}, each used once; "
                                 f"{token!r} has id {token_id}")
            self._id_to_token[token_id] = token
        for normalized_content, token_id in self._normalized_added.items():
            self._id_to_token[token_id] = normalized_content  # what the library decodes such a token as

    def _read_normalizer(self, part, source):
        kind = _type_of(part)
        if kind in ("NFC", "NFD", "NFKC", "NFKD"):
            return functools.partial(unicodedata.normalize, kind)
        if kind == "Prepend" and isinstance(part.get("prepend"), str):
            prefix = part["prepend"]
            return lambda text: prefix + text  # never called on empty text, which the library leaves alone
        if kind == "Replace" and isinstance(part.get("content"), str):
            old = _string_pattern(part, source)
            return lambda text: text.replace(old, part["content"])
        _refuse(source, "normalizer", part, 'NFC, NFD, NFKC, NFKD, Prepend, Replace({"String": ...}) and '
                "Sequence of them")

    def _read_pre_tokenizer(self, part, source):
        """One pre-tokenizer -> a function (piece, first) -> pieces; ``first`` says the piece starts the text."""
        kind = _type_of(part)
        if kind == "ByteLevel" and part.get("add_prefix_space", True) is False:
            byte_to_char, use_regex = gpt2_byte_to_char(), part.get("use_regex", True) is True

            def byte_level(piece, first):
                words = _split_words(piece) if use_regex else [piece]
                return ["".join(byte_to_char[byte] for byte in word.encode("utf-8")) for word in words]
            return byte_level
        if kind == "Split" and part.get("behavior") == "Isolated" and part.get("invert", False) is False:
            pattern = part.get("pattern")
            if isinstance(pattern, dict) and list(pattern) == ["Regex"] and isinstance(pattern["Regex"], str):
                _split_regex(pattern["Regex"], sys.maxunicode)  # refuses an untranslatable pattern now
                regex_text = pattern["Regex"]

                def split(piece, first):
                    limit = 0xFFFF if _BEYOND_BMP.search(piece) is None else sys.maxunicode  # see _split_words
                    return _split_isolated(piece, _split_regex(regex_text, limit))
                return split
            literal = re.compile(re.escape(_string_pattern(part, source)))
            return lambda piece, first: _split_isolated(piece, literal)
        if kind == "Digits":
            digits = _split_regex(r"\p{N}" if part.get("individual_digits") is True else r"\p{N}+", sys.maxunicode)
            return lambda piece, first: _split_isolated(piece, digits)
        if kind == "Metaspace" and isinstance(part.get("replacement"), str) and len(part["replacement"]) == 1 \
                and part.get("prepend_scheme") in ("first", "always", "never"):
            mark, scheme = part["replacement"], part["prepend_scheme"]
            splitter = re.compile(f"(?={re.escape(mark)})") if part.get("split", True) is True else None

            def metaspace(piece, first):
                piece = piece.replace(" ", mark)
                if not piece.startswith(mark) and (scheme == "always" or (scheme == "first" and first)):
                    piece = mark + piece
                return [word for word in splitter.split(piece) if word] if splitter else [piece]
            return metaspace
        _refuse(source, "pre_tokenizer", part, "ByteLevel(add_prefix_space=false), Split(Regex or String, "
                "behavior Isolated, invert false), Digits, Metaspace(prepend_scheme first/always/never) and "
                "Sequence of them")

    def _read_decoder(self, part, source):
        """One decoder -> a function from the list of token strings to a new list, as the library chains them."""
        kind = _type_of(part)
        if kind == "ByteLevel":
            def byte_level(tokens):
                # A token with a character outside GPT-2's byte alphabet (an added token) stands for its UTF-8.
                data = b"".join(_text_to_token(token) or token.encode("utf-8") for token in tokens)
                return [data.decode("utf-8", errors="replace")]
            return byte_level
        if kind == "Replace" and isinstance(part.get("content"), str):
            old, new = _string_pattern(part, source), part["content"]
            return lambda tokens: [token.replace(old, new) for token in tokens]
        if kind == "ByteFallback":
            return _byte_fallback
        if kind == "Fuse":
            return lambda tokens: ["".join(tokens)]
        if kind == "Strip" and isinstance(part.get("content"), str) and len(part["content"]) == 1 \
                and all(type(part.get(key)) is int and part[key] >= 0 for key in ("start", "stop")):
            return functools.partial(_strip_tokens, part["content"], part["start"], part["stop"])
        if kind == "Metaspace" and isinstance(part.get("replacement"), str) \
                and part.get("prepend_scheme") in ("first", "always", "never"):
            mark, strip_first = part["replacement"], part["prepend_scheme"] != "never"

            def metaspace(tokens):
                # As the library does it: with a prepend scheme, *every* mark of the first token is dropped
                # (not only its leading one); elsewhere each mark is a space.
                return [token.replace(mark, "" if index == 0 and strip_first else " ")
                        for index, token in enumerate(tokens)]
            return metaspace
        _refuse(source, "decoder", part, 'ByteLevel, Replace({"String": ...}), ByteFallback, Fuse, Strip, '
                "Metaspace and Sequence of them")

    def _read_post_processor(self, component, source):
        """-> (ids before, ids after) the text's ids; only TemplateProcessing's "single" template adds any."""
        before, after = [], []
        for part in _flatten(component, "processors", source):
            if _type_of(part) == "ByteLevel":  # it only trims offsets, which ids do not carry
                continue
            if _type_of(part) != "TemplateProcessing" or not isinstance(part.get("single"), list) or before or after:
                _refuse(source, "post_processor", part, "ByteLevel, one TemplateProcessing, Sequence of them")
            seen_text = False
            for item in part["single"]:
                kind, value = next(iter(item.items())) if isinstance(item, dict) and len(item) == 1 else (None, None)
                if kind == "Sequence" and isinstance(value, dict) and value.get("id") == "A":
                    seen_text = True
                    continue
                special = (part.get("special_tokens") or {}).get(value.get("id")) if kind == "SpecialToken" \
                    and isinstance(value, dict) else None
                ids = special.get("ids") if isinstance(special, dict) else None
                if not (isinstance(ids, list) and all(type(token_id) is int and 0 <= token_id < self.vocab_size
                                                      for token_id in ids)):
                    _refuse(source, "post_processor template item", item, "SpecialToken (with valid ids) and "
                            "Sequence A")
                (after if seen_text else before).extend(ids)
        return before, after

    # ------------------------------------------------------------------ encoding and decoding

    @property
    def vocab_size(self) -> int:
        return len(self._id_to_token)

    @property
    def special_tokens(self) -> dict[str, int]:
        """{special added token: id} (a copy)."""
        return {content: self._vocab[content] for content in self._special}

    @property
    def eot_token(self) -> int | None:
        """Id of "<|endoftext|>" if this vocabulary has it (SmolLM, Qwen2), else None."""
        return self._vocab.get("<|endoftext|>")

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """str -> ids, as ``tokenizers.Tokenizer.encode(text, add_special_tokens).ids``."""
        text = _without_lone_surrogates(_check_text(text))
        ids = list(self._prefix_ids) if add_special_tokens else []
        start = 0
        for match in self._added_regex.finditer(text) if self._added_regex else ():
            self._encode_piece(text[start : match.start()], start == 0, ids)
            ids.append(self._added[match.group()])
            start = match.end()
        self._encode_piece(text[start:], start == 0, ids)
        if add_special_tokens:
            ids.extend(self._suffix_ids)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> str, as ``tokenizers.Tokenizer.decode(ids, skip_special_tokens=False)``."""
        tokens = _look_up(self._id_to_token, ids)
        if not self._decoders:
            return " ".join(tokens)
        for decoder in self._decoders:
            tokens = decoder(tokens)
        return "".join(tokens)

    def _encode_piece(self, piece, first, ids):
        """Append the ids of ``piece``, a stretch of text between added tokens; ``first``: it starts the text."""
        if not piece:
            return
        piece = self._normalize(piece)
        start = 0
        for match in self._normalized_added_regex.finditer(piece) if self._normalized_added_regex else ():
            self._encode_words(piece[start : match.start()], first and start == 0, ids)
            ids.append(self._normalized_added[match.group()])
            start = match.end()
        self._encode_words(piece[start:], first and start == 0, ids)

    def _normalize(self, text):
        for normalize in self._normalizers:
            text = normalize(text)
        return text

    def _encode_words(self, piece, first, ids):
        if not piece:
            return
        words = [(piece, first)]
        for pre_tokenize in self._pre_tokenizers:
            words = [(word, word_first and index == 0) for word, word_first in words
                     for index, word in enumerate(pre_tokenize(word, word_first))]
        for word, _ in words:
            ids.extend(_word_ids(self._word_cache, word, self._bpe))

    def _bpe(self, word):
        """One pre-tokenized word -> ids: its characters as symbols (unknown ones as their <0xNN> bytes with
        byte fallback, else the unknown token, fused when fuse_unk, else dropped, as the library does), then
        the library's merges."""
        vocab = self._vocab
        if self._ignore_merges and word in vocab:
            return [vocab[word]]
        symbols, previous_unknown = [], False
        for char in word:
            token_id = vocab.get(char)
            if token_id is not None:
                symbols.append(token_id)
            elif self._byte_fallback_ids is not None:
                symbols.extend(self._byte_fallback_ids[byte] for byte in char.encode("utf-8"))
            elif self._unk_id is not None and not (self._fuse_unk and previous_unknown):
                symbols.append(self._unk_id)
            previous_unknown = token_id is None
        return _apply_merges(symbols, self._merge_ranks, in_rounds=False)

    # ------------------------------------------------------------------ files

    @classmethod
    def from_tokenizer_json(cls, path: str | os.PathLike) -> HFTokenizer:
        """Load a tokenizer.json file; ValueError naming the file and any unsupported component."""
        path = Path(path)
        return cls(read_json(_existing_file(path)), str(path))

    def to_dict(self) -> dict:
        """Plain JSON-serializable description (the tokenizer.json itself), for checkpoints and token caches."""
        return {"type": "hf_tokenizer_json", "tokenizer_json": self._data}

    @classmethod
    def from_dict(cls, data: dict) -> HFTokenizer:
        """The tokenizer ``to_dict`` described."""
        if not isinstance(data, dict) or data.get("type") != "hf_tokenizer_json":
            raise ValueError("expected a dict with 'type': 'hf_tokenizer_json', as written by HFTokenizer.to_dict")
        return cls(data.get("tokenizer_json"), "the 'tokenizer_json' entry")

    def save(self, directory: str | os.PathLike) -> None:
        """Write the tokenizer.json this tokenizer was read from into ``directory`` (whole or not at all)."""
        write_text(Path(directory) / CHAR_TOKENIZER_FILE, json.dumps(self._data, ensure_ascii=False))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> HFTokenizer:
        """Read ``directory``/tokenizer.json."""
        return cls.from_tokenizer_json(Path(directory) / CHAR_TOKENIZER_FILE)


def _byte_fallback(tokens):
    """The ByteFallback decoder: each run of <0xNN> tokens becomes the text of its bytes, or one U+FFFD per
    byte when they are not valid UTF-8 (not Python's per-subsequence replacement)."""
    result, pending = [], []
    for token in tokens + [None]:
        if token is not None and len(token) == 6 and re.fullmatch(r"<0x[0-9A-F]{2}>", token):
            pending.append(int(token[3:5], 16))
            continue
        if pending:
            try:
                result.append(bytes(pending).decode("utf-8"))
            except UnicodeDecodeError:
                result.extend("\ufffd" * len(pending))
            pending = []
        if token is not None:
            result.append(token)
    return result


def _strip_tokens(content, start, stop, tokens):
    """The Strip decoder: up to ``start`` leading and ``stop`` trailing ``content`` characters off each token."""
    stripped = []
    for token in tokens:
        head = 0
        while head < min(start, len(token)) and token[head] == content:
            head += 1
        tail = len(token)
        while len(token) - tail < stop and tail > head and token[tail - 1] == content:
            tail -= 1
        stripped.append(token[head:tail])
    return stripped


# Any tokenizer, for type hints (a Union, not "|": Python 3.9 evaluates an alias at run time).
Tokenizer = Union[CharTokenizer, ByteBPETokenizer, HFTokenizer]


# ----------------------------------------------------------------------------------------------
# Files


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer | None:
    """The tokenizer saved in ``directory``, of the class its files say; None when it holds no tokenizer files.

    tokenizer.json first, since it describes the whole pipeline: a CharTokenizer when it says ``"type": "char"``
    (what ``CharTokenizer.save`` writes), else the `tokenizers` library's format: a ByteBPETokenizer for GPT-2's
    pipeline (what current transformers saves for GPT-2), an HFTokenizer for any other (Llama, Mistral, Qwen2,
    SmolLM; their Hub directories may also hold vocab.json + merges.txt, which alone would lose their own
    pre-tokenization). Otherwise vocab.json + merges.txt: a ByteBPETokenizer (GPT-2's files, as
    ``ByteBPETokenizer.save`` and Hugging Face write them). One of vocab.json and merges.txt without the other
    (and no tokenizer.json) is a damaged directory: a FileNotFoundError naming the missing one, not a model silently
    loaded without its tokenizer.
    """
    directory = Path(directory)
    vocab_file, merges_file, single_file = (directory / name for name in ("vocab.json", "merges.txt",
                                                                          CHAR_TOKENIZER_FILE))
    if single_file.is_file():
        data = read_json(single_file)
        if isinstance(data, dict) and data.get("type") == "char":
            return CharTokenizer._from_file_data(data, single_file)
        if isinstance(data, dict) and not _describes_gpt2(data):
            return HFTokenizer(data, str(single_file))
        return ByteBPETokenizer._from_tokenizer_json_data(data, single_file)
    if vocab_file.is_file() and merges_file.is_file():
        return ByteBPETokenizer.load(directory)
    if vocab_file.is_file() or merges_file.is_file():
        present, absent = (vocab_file, merges_file) if vocab_file.is_file() else (merges_file, vocab_file)
        raise FileNotFoundError(f"{directory}: has {present.name} but no {absent.name} (nor {CHAR_TOKENIZER_FILE}); "
                                "GPT-2's tokenizer needs both")
    return None


def _merge_ranks(merges: list[tuple], vocab: dict, vocab_name: str, prefix: str = "") -> dict:
    """(left id, right id) -> (rank, id of the joined token) for `merges`, (left, right) pairs of token texts in rank
    order. ValueError (its message starting with `prefix`) for a merge whose parts or result are not in `vocab`
    (named vocab_name in the message) or that repeats an earlier one."""
    ranks = {}
    for rank, (left, right) in enumerate(merges):
        for part in (left, right, left + right):
            if part not in vocab:
                raise ValueError(f"{prefix}merge {rank} ({left!r}, {right!r}) needs {part!r}, not in {vocab_name}")
        pair = (vocab[left], vocab[right])
        if pair in ranks:
            raise ValueError(f"{prefix}merge {rank} ({left!r}, {right!r}) repeats merge {ranks[pair][0]}")
        ranks[pair] = (rank, vocab[left + right])
    return ranks


def _merge_parts(merge: object, index: int, source: object) -> tuple[str, str]:
    """A merge of tokenizer.json's model.merges, a 'left right' string or a [left, right] pair of strings, as
    (left, right); ValueError naming `source` and the merge otherwise."""
    parts = merge.split(" ") if isinstance(merge, str) else merge
    if not (isinstance(parts, list) and len(parts) == 2 and all(isinstance(part, str) for part in parts)):
        raise ValueError(f"{source}: merge {index} is {reprlib.repr(merge)}; expected a 'left right' string or a "
                         "[left, right] pair of strings")
    return parts[0], parts[1]


def _existing_file(path: str | os.PathLike) -> Path:
    """``path`` as a Path if it is a file; else FileNotFoundError naming it as a tokenizer file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    return path


def _read_text(path):
    try:
        return _existing_file(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error})") from None


def tokenizer_from_dict(data: dict) -> Tokenizer:
    """Any tokenizer from its ``to_dict()`` form, told apart by the 'type' entry."""
    kinds = {"char": CharTokenizer, "byte_bpe": ByteBPETokenizer, "hf_tokenizer_json": HFTokenizer}
    kind = data.get("type") if isinstance(data, dict) else None
    if kind not in kinds:
        raise ValueError(f"unknown tokenizer type {kind!r}; expected one of {sorted(kinds)}")
    return kinds[kind].from_dict(data)


def start_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """The prompt's ids; an empty prompt starts from <|endoftext|> if the vocabulary has it, else a newline,
    else the first token."""
    if prompt:
        return tokenizer.encode(prompt)
    if getattr(tokenizer, "eot_token", None) is not None:
        return [tokenizer.eot_token]
    try:
        return tokenizer.encode("\n")
    except ValueError:  # a character vocabulary without newlines
        return [0]

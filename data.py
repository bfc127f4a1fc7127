"""Training data: token datasets from text files, a synthetic sorting task, and the tiny Shakespeare download.

* ``prepare_text_dataset(path)`` encodes a UTF-8 text file once into a uint16 token file in a cache directory
  (never beside the text), keyed by the text and the tokenizer, and memory-maps it, so the corpus never has to
  fit in memory; ``TokenDataset.get_batch`` samples random training windows.
* ``SortingTask`` is a built-in task that needs no download: sort a short sequence of digits.
* ``download_shakespeare()`` fetches nanoGPT's tiny Shakespeare corpus and verifies it.

Command line:
    python data.py shakespeare [--cache-dir DIR]   download, print the path to pass to train.py --data
    python data.py prepare PATH                     encode a text file, print token counts
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import http.client
import json
import os
import stat
import sys
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from atomic_files import atomic_output, read_json
from tokenizer import CharTokenizer, Tokenizer
from transformer_config import IGNORE_INDEX, is_positive_integer, python_scalar

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SIZE = 1_115_394
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHAKESPEARE_FILENAME = "tinyshakespeare.txt"

TOKEN_DTYPE = np.uint16  # two bytes per token on disk: enough for vocabularies up to 65,536 tokens
TEXT_CHUNK_CHARS = 1 << 22  # characters read and encoded at a time, so encoding never holds the whole text
DOWNLOAD_CHUNK_BYTES = 1 << 16
DOWNLOAD_TIMEOUT_S = 60


def default_cache_dir() -> Path:
    """Where cached files go unless told otherwise: $XDG_CACHE_HOME/numpy-transformer-lm or ~/.cache/..."""
    cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache_home) / "numpy-transformer-lm"


# ----------------------------------------------------------------------------------------------
# Token datasets from text files


class TokenDataset:
    """A stream of token ids split into train (the first part) and val (the last ``val_fraction``).

    tokens: (N,) integer array, usually a read-only ``np.memmap`` of the token file.
    tokenizer: the tokenizer that produced the ids (kept so a trainer can save it with the model).
    """

    def __init__(self, tokens: np.ndarray, tokenizer: Tokenizer, val_fraction: float = 0.1,
                 token_path: Path | None = None) -> None:
        _check_val_fraction(val_fraction)
        n_tokens = len(tokens)
        # nanoGPT's split: train gets int(N * (1 - val_fraction)) tokens, val the rest.
        n_train = int(n_tokens * (1.0 - val_fraction))
        if n_train < 2 or n_tokens - n_train < 2:
            raise ValueError(
                f"{n_tokens} tokens are too few to split with val_fraction={val_fraction}: each split "
                f"needs at least 2 tokens (an input and its target), got {n_train} train and "
                f"{n_tokens - n_train} val"
            )
        self.tokens = tokens
        self.tokenizer = tokenizer
        self.token_path = token_path
        self.train_tokens = tokens[:n_train]
        self.val_tokens = tokens[n_train:]

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def split(self, name: str) -> np.ndarray:
        """The token array of split ``name`` ("train" or "val")."""
        if name == "train":
            return self.train_tokens
        if name == "val":
            return self.val_tokens
        raise ValueError(f"split must be 'train' or 'val', got {name!r}")

    def check_block_size(self, block_size: int, splits: tuple[str, ...] = ("train", "val")) -> None:
        """Raise ValueError unless every split holds at least one window of block_size tokens and its
        targets (block_size + 1 tokens). A trainer calls this before training, not at the first batch."""
        _check_positive_int(block_size, "block_size")
        for split in splits:
            n_tokens = len(self.split(split))
            if n_tokens < block_size + 1:
                raise ValueError(f"the {split} split has {n_tokens} tokens, fewer than block_size + 1 = "
                                 f"{block_size + 1} (one window and its next-token targets)")

    def get_batch(self, split: str, batch_size: int, block_size: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Random windows of the split, as in nanoGPT: x = tokens[s : s+T], y = tokens[s+1 : s+T+1].

        rng: a ``np.random.Generator`` (the only source of randomness).
        Returns x, y: (B, T) int64 arrays, B = batch_size, T = block_size.
        """
        data = self.split(split)
        _check_positive_int(batch_size, "batch_size")
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        self.check_block_size(block_size, splits=(split,))
        starts = rng.integers(0, len(data) - block_size, size=batch_size)  # (B,)
        positions = starts[:, None] + np.arange(block_size)  # (B, T)
        # Fancy indexing a memmap reads only the pages holding these windows.
        x = data[positions].astype(np.int64)
        y = data[positions + 1].astype(np.int64)
        return x, y


def prepare_text_dataset(text_path: str | os.PathLike, tokenizer: Tokenizer | None = None,
                         val_fraction: float = 0.1, cache_dir: str | os.PathLike | None = None) -> TokenDataset:
    """Encode a UTF-8 text file into a cached uint16 token file and return it as a memory-mapped dataset.

    text_path: the text file; nothing is ever written beside it.
    tokenizer: a ``CharTokenizer`` or ``ByteBPETokenizer`` (any tokenizer with ``encode``, ``vocab_size`` and
        ``to_dict``). None builds a CharTokenizer from the text. The text is encoded in pieces of 4M
        characters, so a byte-level BPE may split a word differently where two pieces meet.
    cache_dir: where the token files go (default ``default_cache_dir()``).

    The token file ``<text name>-<path hash>-<tokenizer hash>.tokens.uint16`` and its JSON sidecar ``.tokens.json``
    are named after the text's full path and a hash of ``tokenizer.to_dict()``, so same-named texts in different
    folders, and one text's character and BPE caches, never overwrite each other. The sidecar records the text's
    size and modification time and the tokenizer; a cache whose record no longer matches is rebuilt (like make, a
    change that keeps both size and mtime is not noticed), and the caches of an earlier version of the text are
    removed then. Without a tokenizer argument, the cache of this text made with its own character vocabulary is
    reused together with the tokenizer it records, without reading the text again.
    """
    text_path = Path(text_path)
    source_stat = check_text_file(text_path)
    _check_val_fraction(val_fraction)
    cache_dir = Path(default_cache_dir() if cache_dir is None else cache_dir)
    # A hash of the full path keeps same-named texts apart in the shared cache directory.
    text_key = f"{text_path.name}-{_short_hash(str(text_path.resolve()))}"

    from_text = tokenizer is None
    if from_text:
        for metadata_path in sorted(cache_dir.glob(f"{glob.escape(text_key)}-*.tokens.json")):
            token_path = metadata_path.with_suffix(".uint16")
            metadata = _fresh_cache_metadata(token_path, source_stat)
            if metadata is None or metadata.get("tokenizer_from_text") is not True:
                continue
            try:  # a damaged record is not reused (its cache is rebuilt below)
                cached_tokenizer = CharTokenizer.from_dict(metadata["tokenizer"])
            except (TypeError, ValueError):
                continue
            return _open_token_file(token_path, metadata["n_tokens"], cached_tokenizer, val_fraction)
        tokenizer = _char_tokenizer_for_file(text_path)

    tokenizer_record = _as_json(tokenizer.to_dict())
    token_path = cache_dir / f"{text_key}-{_short_hash(json.dumps(tokenizer_record, sort_keys=True))}.tokens.uint16"
    metadata = _fresh_cache_metadata(token_path, source_stat, tokenizer_record)
    if metadata is not None:
        return _open_token_file(token_path, metadata["n_tokens"], tokenizer, val_fraction)
    max_token_id = tokenizer.vocab_size - 1
    if max_token_id > np.iinfo(TOKEN_DTYPE).max:
        raise ValueError(
            f"vocab_size {tokenizer.vocab_size} does not fit the uint16 token file (at most 65,536 tokens)"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_caches(cache_dir, text_key, source_stat)
    n_tokens = _write_token_cache(text_path, source_stat, tokenizer, token_path, from_text)
    return _open_token_file(token_path, n_tokens, tokenizer, val_fraction)


def check_text_file(text_path: str | os.PathLike) -> os.stat_result:
    """The ``os.stat`` of ``text_path`` if it is a readable, non-empty regular file; else FileNotFoundError,
    IsADirectoryError, PermissionError or ValueError saying which. (Whether it is UTF-8 shows when it is read.)"""
    text_path = Path(text_path)
    try:
        source_stat = text_path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"text file not found: {text_path}") from None
    if stat.S_ISDIR(source_stat.st_mode):
        raise IsADirectoryError(f"{text_path} is a directory, expected a UTF-8 text file")
    if not stat.S_ISREG(source_stat.st_mode):
        raise ValueError(f"{text_path} is not a regular file, expected a UTF-8 text file")
    if source_stat.st_size == 0:
        raise ValueError(f"text file is empty: {text_path}")
    if not os.access(text_path, os.R_OK):
        raise PermissionError(f"text file is not readable (permission denied): {text_path}")
    return source_stat


def read_text_file(text_path: str | os.PathLike) -> str:
    """The whole text of a UTF-8 file, line endings kept as they are (like the token files)."""
    check_text_file(text_path)
    return "".join(_read_text_chunks(text_path))


def _check_val_fraction(val_fraction):
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")


def _check_positive_int(value, name):
    if not is_positive_integer(python_scalar(value)):  # NumPy integers too: counts often come out of arrays
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _as_json(value):
    """``value`` as it reads back from JSON (tuples become lists), so it compares equal to a stored copy."""
    return json.loads(json.dumps(value))


def _short_hash(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _read_text_chunks(text_path):
    """Yield the text of ``text_path`` in pieces of at most TEXT_CHUNK_CHARS characters."""
    # newline="" keeps "\r\n" as two characters: the tokens describe the file exactly as it is.
    with open(text_path, encoding="utf-8", newline="") as text_file:
        while True:
            try:
                chunk = text_file.read(TEXT_CHUNK_CHARS)
            except UnicodeDecodeError as error:
                raise ValueError(f"{text_path} is not UTF-8 text: {error}") from None
            if not chunk:
                return
            yield chunk


def _char_tokenizer_for_file(text_path):
    """``CharTokenizer.from_text`` of the whole file, reading it piece by piece."""
    characters = set()
    for chunk in _read_text_chunks(text_path):
        characters.update(chunk)
    # from_text looks only at which characters occur, so the distinct characters stand for the whole text.
    return CharTokenizer.from_text("".join(characters))


def _metadata_path(token_path):
    """The JSON sidecar of a token file: ``x.tokens.uint16`` -> ``x.tokens.json``."""
    return token_path.with_suffix(".json")


def _fresh_cache_metadata(token_path, source_stat, expected_tokenizer=None):
    """The sidecar record of the token file if it is usable for this text (and made with ``expected_tokenizer``,
    a ``to_dict()`` as JSON reads it back, when given), else None."""
    try:
        metadata = read_json(_metadata_path(token_path))
        token_file_bytes = token_path.stat().st_size
    except (OSError, ValueError):
        return None  # absent or unreadable: rebuild
    if not isinstance(metadata, dict):
        return None
    n_tokens = metadata.get("n_tokens")
    fresh = (
        metadata.get("source_size") == source_stat.st_size
        and metadata.get("source_mtime_ns") == source_stat.st_mtime_ns
        and isinstance(n_tokens, int) and not isinstance(n_tokens, bool)
        and n_tokens * TOKEN_DTYPE().itemsize == token_file_bytes
        and isinstance(metadata.get("tokenizer"), dict)
        and (expected_tokenizer is None or metadata["tokenizer"] == expected_tokenizer)
    )
    return metadata if fresh else None


def _remove_stale_caches(cache_dir, text_key, source_stat):
    """Delete the caches of ``text_key``'s text whose record says they were made from another version of it."""
    for metadata_path in cache_dir.glob(f"{glob.escape(text_key)}-*.tokens.json"):
        token_path = metadata_path.with_suffix(".uint16")
        try:
            metadata = read_json(metadata_path)
        except (OSError, ValueError):
            continue  # unreadable: leave it to whoever can tell what it is
        if not isinstance(metadata, dict):
            continue
        if (metadata.get("source_size"), metadata.get("source_mtime_ns")) != (source_stat.st_size,
                                                                               source_stat.st_mtime_ns):
            metadata_path.unlink(missing_ok=True)  # the sidecar first: a token file without one is never used
            token_path.unlink(missing_ok=True)


def _write_token_cache(text_path, source_stat, tokenizer, token_path, tokenizer_from_text):
    """Encode the text into ``token_path`` and describe it in the JSON sidecar; returns the token count.
    tokenizer_from_text: whether ``tokenizer`` is the character vocabulary of this very text.

    Both files are written to temporary names and renamed into place, and the old sidecar is removed first,
    so an interrupted run never leaves a sidecar that vouches for the wrong token file.
    """
    metadata_path = _metadata_path(token_path)
    metadata_path.unlink(missing_ok=True)
    n_tokens = 0
    with atomic_output(token_path) as token_file:
        for chunk in _read_text_chunks(text_path):
            ids = np.asarray(tokenizer.encode(chunk), dtype=np.int64)
            ids.astype(TOKEN_DTYPE).tofile(token_file)
            n_tokens += len(ids)
    metadata = {
        "source": str(text_path.resolve()),
        "source_size": source_stat.st_size,
        "source_mtime_ns": source_stat.st_mtime_ns,
        "n_tokens": n_tokens,
        "dtype": "uint16",
        "tokenizer": _as_json(tokenizer.to_dict()),
        "tokenizer_from_text": tokenizer_from_text,
    }
    with atomic_output(metadata_path) as metadata_file:
        metadata_file.write(json.dumps(metadata, ensure_ascii=False).encode("utf-8"))
    return n_tokens


def _open_token_file(token_path, n_tokens, tokenizer, val_fraction):
    tokens = np.memmap(token_path, dtype=TOKEN_DTYPE, mode="r", shape=(n_tokens,))
    return TokenDataset(tokens, tokenizer, val_fraction, token_path=token_path)


# ----------------------------------------------------------------------------------------------
# A synthetic task: sorting digits


class SortingTask:
    """Sort ``length`` digits drawn from {0, ..., num_digits - 1} (the demo task of minGPT).

    One example is the problem followed by its answer, e.g. length 6:  2 0 1 1 0 2 | 0 0 1 1 2 2.
    The model reads all but the last token and predicts the next token at every position; only the
    ``length`` answer tokens are scored, the other targets are IGNORE_INDEX:
        x = 2 0 1 1 0 2 0 0 1 1 2          (block_size = 2 * length - 1 tokens)
        y = . . . . . 0 0 1 1 2 2          (. = IGNORE_INDEX)

    Problems are split once and for all into train and test by a hash of the digits, so a model scored on
    test problems has never trained on them. The defaults (length 6, 3 digits: 729 problems, about a quarter
    held out) are easy: an 86K-parameter pre-LN model (3 layers, d_model 48, AdamW at lr 5e-3, batches of
    64) scored over 99% exact match on held-out problems after 750 steps, about a minute on 2 CPU cores.
    """

    def __init__(self, length: int = 6, num_digits: int = 3, test_fraction: float = 0.25) -> None:
        _check_positive_int(length, "length")
        if length < 2:
            raise ValueError(f"length must be at least 2, got {length}")
        _check_positive_int(num_digits, "num_digits")
        if num_digits < 2:
            raise ValueError(f"num_digits must be at least 2, got {num_digits}")
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        self.length = int(length)
        self.num_digits = int(num_digits)
        self.test_fraction = float(test_fraction)

    @property
    def vocab_size(self) -> int:
        return self.num_digits

    @property
    def block_size(self) -> int:
        return 2 * self.length - 1

    def is_test_problem(self, problems: np.ndarray) -> np.ndarray:
        """(B, length) digits -> (B,) bool, True for problems held out for testing.

        CRC-32 of the digits, scaled to [0, 1): a fixed hash, so the split is the same on every run.
        """
        problems = np.asarray(problems, dtype=np.int64)
        hashes = np.array([zlib.crc32(problem.tobytes()) for problem in problems], dtype=np.float64)
        return hashes / 2.0**32 < self.test_fraction

    def sample_problems(self, n_problems: int, rng: np.random.Generator, split: str = "train") -> np.ndarray:
        """(n_problems, length) int64 random problems of ``split`` ("train" or "test")."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        want_test = split == "test"
        found = []
        n_found = 0
        # Rejection sampling: draw random problems and keep those of the wanted split.
        for _ in range(1000):
            candidates = rng.integers(0, self.num_digits, size=(2 * n_problems, self.length))
            kept = candidates[self.is_test_problem(candidates) == want_test]
            found.append(kept)
            n_found += len(kept)
            if n_found >= n_problems:
                return np.concatenate(found)[:n_problems]
        raise ValueError(f"the {split} split of this task is (nearly) empty: choose a larger task")

    def get_batch(self, batch_size: int, rng: np.random.Generator,
                  split: str = "train") -> tuple[np.ndarray, np.ndarray]:
        """x, y: (B, block_size) int64; y is IGNORE_INDEX except at the answer positions."""
        _check_positive_int(batch_size, "batch_size")
        problems = self.sample_problems(batch_size, rng, split)  # (B, n)
        sequences = np.concatenate([problems, np.sort(problems, axis=1)], axis=1)  # (B, 2n)
        x = sequences[:, :-1].copy()
        y = sequences[:, 1:].copy()
        y[:, : self.length - 1] = IGNORE_INDEX  # predictions made while still reading the problem
        return x, y

    def exact_match_accuracy(self, predict_fn: Callable[[np.ndarray], np.ndarray], n_examples: int,
                             rng: np.random.Generator, split: str = "test") -> float:
        """Fraction of ``n_examples`` random problems whose whole answer ``predict_fn`` gets right.

        predict_fn: (B, length) int64 problems -> (B, length) predicted answers (e.g. greedy decoding).
        """
        _check_positive_int(n_examples, "n_examples")
        problems = self.sample_problems(n_examples, rng, split)
        predictions = np.asarray(predict_fn(problems.copy()))
        if predictions.shape != problems.shape:
            raise ValueError(f"predict_fn returned shape {predictions.shape}, expected {problems.shape}")
        correct = np.all(predictions == np.sort(problems, axis=1), axis=1)  # (B,)
        return float(np.mean(correct))


# ----------------------------------------------------------------------------------------------
# Downloading tiny Shakespeare


class DownloadError(RuntimeError):
    """A download failed: unreachable server, HTTP error, truncated body or wrong checksum."""


def download_shakespeare(cache_dir: str | os.PathLike | None = None, url: str = SHAKESPEARE_URL, progress: bool = True,
                         expected_size: int = SHAKESPEARE_SIZE, expected_sha256: str = SHAKESPEARE_SHA256) -> Path:
    """Download tiny Shakespeare into ``cache_dir`` (default ``default_cache_dir()``) and return its path.

    A file already there with the expected size and SHA-256 is returned at once. Otherwise the body is
    streamed into a temporary file beside the destination and renamed into place only after its size and
    SHA-256 check out, so a failed download never leaves a partial file. Progress goes to stderr.
    Raises DownloadError naming the URL and the problem, and what to do without the network: fetch the file
    elsewhere and put it at the destination (it is checked and used from there), or train on any copy with
    ``train.py --data PATH``.
    """
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    destination = directory / SHAKESPEARE_FILENAME
    if destination.is_file() and _file_matches(destination, expected_size, expected_sha256):
        return destination

    directory.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_output(destination) as output:
            received, sha256 = _stream_download(url, output, progress)
            if received != expected_size:
                raise DownloadError(f"{url}: received {received:,} bytes, expected {expected_size:,}")
            if sha256 != expected_sha256:
                raise DownloadError(f"{url}: SHA-256 mismatch: got {sha256}, expected {expected_sha256}")
    except DownloadError as error:
        raise DownloadError(f"{error}. Without this download: fetch {url} on a machine that can, save it as "
                            f"{destination} (it is checked and used from there) or anywhere, and pass that file to "
                            "train.py --data PATH") from error.__cause__
    return destination


def _file_matches(path, expected_size, expected_sha256):
    if path.stat().st_size != expected_size:
        return False
    digest = hashlib.sha256()
    with open(path, "rb") as existing:
        for block in iter(lambda: existing.read(DOWNLOAD_CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest() == expected_sha256


def _stream_download(url, output, progress):
    """Copy the body at ``url`` into the binary file ``output``; returns (bytes received, SHA-256 hex)."""
    digest = hashlib.sha256()
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            content_length = response.headers.get("Content-Length")
            total = int(content_length) if content_length else None
            while True:
                block = response.read(DOWNLOAD_CHUNK_BYTES)
                if not block:
                    break
                output.write(block)
                digest.update(block)
                received += len(block)
                if progress:
                    _show_progress(url, received, total)
    except urllib.error.HTTPError as error:
        raise DownloadError(f"{url}: HTTP error {error.code} {error.reason}") from error
    except urllib.error.URLError as error:
        raise DownloadError(f"{url}: could not connect: {error.reason}") from error
    except (http.client.HTTPException, OSError) as error:  # e.g. the connection dropped mid-body
        raise DownloadError(f"{url}: download failed: {error!r}") from error
    finally:
        if progress and received:
            print(file=sys.stderr)  # end the progress line
    # A server that closes early makes read() return b"" instead of raising: compare with the header.
    if total is not None and received != total:
        raise DownloadError(f"{url}: truncated download: received {received:,} of {total:,} bytes")
    return received, digest.hexdigest()


def _show_progress(url, received, total):
    if total:
        status = f"{received:,} / {total:,} bytes ({100.0 * received / total:.0f}%)"
    else:
        status = f"{received:,} bytes"
    print(f"\rdownloading {url}: {status}", end="", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="data.py", description="Prepare training data.")
    commands = parser.add_subparsers(dest="command", required=True)
    shakespeare = commands.add_parser(
        "shakespeare", help="download tiny Shakespeare and print its path (for train.py --data)"
    )
    shakespeare.add_argument("--cache-dir", type=Path, default=None,
                             help=f"where to keep the file (default {default_cache_dir()})")
    prepare = commands.add_parser("prepare", help="encode a UTF-8 text file and print its token counts")
    prepare.add_argument("path", type=Path, help="the text file")
    prepare.add_argument("--val-fraction", type=float, default=0.1, help="share of tokens held out (the end)")
    prepare.add_argument("--cache-dir", type=Path, default=None,
                         help=f"where the token files go, never beside the text (default {default_cache_dir()})")
    args = parser.parse_args(argv)

    try:
        if args.command == "shakespeare":
            print(download_shakespeare(args.cache_dir))
        else:
            dataset = prepare_text_dataset(args.path, val_fraction=args.val_fraction,
                                           cache_dir=args.cache_dir)
            print(f"{args.path}: {len(dataset.tokens):,} tokens (train {len(dataset.train_tokens):,}, "
                  f"val {len(dataset.val_tokens):,}), vocab_size {dataset.vocab_size}, "
                  f"token file {dataset.token_path}")
    except (DownloadError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

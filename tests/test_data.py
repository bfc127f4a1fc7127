"""Tests for data.py: cached token datasets, the sorting task, and the downloader against a local server."""
import hashlib
import http.server
import os
import shutil
import socket
import threading
import urllib.error

import numpy as np
import pytest
from conftest import require_shared

import data
from data import (
    IGNORE_INDEX,
    DownloadError,
    SortingTask,
    TokenDataset,
    download_shakespeare,
    prepare_text_dataset,
)
from tokenizer import CharTokenizer

ALPHABET = "abcdefgh \n"


def random_text(rng, n_chars, alphabet=ALPHABET):
    return "".join(rng.choice(list(alphabet), size=n_chars))


def char_ids(text, alphabet):
    """Token ids of ``text`` for a vocabulary of the sorted distinct characters of ``alphabet``."""
    vocabulary = sorted(set(alphabet))
    return np.array([vocabulary.index(char) for char in text])


def write_text(path, text):
    path.write_text(text, encoding="utf-8", newline="")
    return path


@pytest.fixture
def corpus(tmp_path):
    """A 1,000-character text file and its expected token ids."""
    text = random_text(np.random.default_rng(0), 1000)
    return write_text(tmp_path / "corpus.txt", text), char_ids(text, text)


# ----------------------------------------------------------------------------------------------
# prepare_text_dataset and TokenDataset


def test_tokens_and_split_boundary(corpus, tmp_path):
    path, ids = corpus
    dataset = prepare_text_dataset(path, cache_dir=tmp_path / "cache")
    assert isinstance(dataset.tokens, np.memmap)
    assert not dataset.tokens.flags.writeable
    np.testing.assert_array_equal(dataset.tokens, ids)
    np.testing.assert_array_equal(dataset.train_tokens, ids[:900])  # the last 10% is validation
    np.testing.assert_array_equal(dataset.val_tokens, ids[900:])
    assert dataset.vocab_size == len(set(ALPHABET))
    assert dataset.token_path.parent == tmp_path / "cache" and dataset.token_path.name.startswith("corpus.txt-")
    assert dataset.token_path.stat().st_size == 2 * 1000  # two bytes per token


def test_other_val_fraction(corpus, tmp_path):
    path, ids = corpus
    dataset = prepare_text_dataset(path, val_fraction=0.25, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(dataset.val_tokens, ids[750:])


def test_multibyte_characters_and_crlf_across_chunks(tmp_path, monkeypatch):
    text = "héllo\r\nwörld ✓ naïve\r\n" * 20
    path = write_text(tmp_path / "unicode.txt", text)
    monkeypatch.setattr(data, "TEXT_CHUNK_CHARS", 7)  # many chunks, cutting through the text anywhere
    dataset = prepare_text_dataset(path, cache_dir=tmp_path / "cache")
    assert len(dataset.tokens) == len(text)  # one token per character, "\r" kept
    np.testing.assert_array_equal(dataset.tokens, char_ids(text, text))
    assert dataset.tokenizer.decode(dataset.tokens) == text


def test_batches_are_shifted_windows_of_their_split(corpus, tmp_path):
    path, ids = corpus
    dataset = prepare_text_dataset(path, cache_dir=tmp_path / "cache")
    block_size = 8
    for split, split_ids in (("train", ids[:900]), ("val", ids[900:])):
        x, y = dataset.get_batch(split, batch_size=16, block_size=block_size, rng=np.random.default_rng(1))
        assert x.shape == y.shape == (16, block_size)
        assert x.dtype == y.dtype == np.int64
        np.testing.assert_array_equal(y[:, :-1], x[:, 1:])
        for x_row, y_row in zip(x, y):
            window = np.concatenate([x_row, y_row[-1:]])
            starts = range(len(split_ids) - block_size)
            assert any(np.array_equal(split_ids[s : s + block_size + 1], window) for s in starts), split


def test_batches_reach_the_last_token_of_a_split():
    # A split of exactly block_size + 1 tokens has one window, which must end on its last token.
    dataset = TokenDataset(np.arange(20, dtype=np.uint16), CharTokenizer.from_text("ab"), val_fraction=0.5)
    x, y = dataset.get_batch("val", batch_size=3, block_size=9, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(x, np.tile(np.arange(10, 19), (3, 1)))
    np.testing.assert_array_equal(y, np.tile(np.arange(11, 20), (3, 1)))


def test_seeded_batches_are_reproducible(corpus, tmp_path):
    path, _ = corpus
    dataset = prepare_text_dataset(path, cache_dir=tmp_path / "cache")
    first = dataset.get_batch("train", 4, 16, np.random.default_rng(7))
    again = dataset.get_batch("train", 4, 16, np.random.default_rng(7))
    other = dataset.get_batch("train", 4, 16, np.random.default_rng(8))
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


def test_cache_is_reused(corpus, tmp_path):
    path, ids = corpus
    first = prepare_text_dataset(path, cache_dir=tmp_path / "cache")
    before = first.token_path.stat()
    second = prepare_text_dataset(path, cache_dir=tmp_path / "cache")
    after = second.token_path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not rewritten
    assert second.tokenizer.to_dict() == first.tokenizer.to_dict()
    np.testing.assert_array_equal(second.tokens, ids)


def test_cache_is_rebuilt_when_the_text_changes_size(corpus, tmp_path):
    path, _ = corpus
    old = prepare_text_dataset(path, cache_dir=tmp_path / "cache")
    new_text = random_text(np.random.default_rng(1), 600, alphabet="xyz\n")
    write_text(path, new_text)
    dataset = prepare_text_dataset(path, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(dataset.tokens, char_ids(new_text, new_text))
    assert dataset.tokenizer.chars == ["\n", "x", "y", "z"]
    # The old text's cache (another vocabulary, so another file) is removed, not left to pile up.
    assert dataset.token_path != old.token_path
    assert sorted(os.listdir(tmp_path / "cache")) == sorted([dataset.token_path.name,
                                                             dataset.token_path.with_suffix(".json").name])


def test_cache_is_rebuilt_when_the_text_changes_at_the_same_size(corpus, tmp_path):
    path, _ = corpus
    old_mtime_ns = path.stat().st_mtime_ns
    prepare_text_dataset(path, cache_dir=tmp_path / "cache")
    new_text = random_text(np.random.default_rng(2), 1000)
    write_text(path, new_text)
    os.utime(path, ns=(old_mtime_ns + 10**9, old_mtime_ns + 10**9))  # a later save, whatever the clock says
    dataset = prepare_text_dataset(path, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(dataset.tokens, char_ids(new_text, new_text))


def test_cache_is_rebuilt_for_a_different_tokenizer(corpus, tmp_path):
    path, _ = corpus
    text = path.read_text(encoding="utf-8")
    prepare_text_dataset(path, cache_dir=tmp_path / "cache")
    wider = CharTokenizer.from_text(text + "XYZ")  # capitals sort first and shift every id by 3
    dataset = prepare_text_dataset(path, tokenizer=wider, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(dataset.tokens, char_ids(text, text + "XYZ"))
    assert dataset.tokenizer is wider
    # Without a tokenizer argument, the text's own vocabulary again, not the wider one just used.
    again = prepare_text_dataset(path, cache_dir=tmp_path / "cache")
    assert again.tokenizer.chars == sorted(set(text))
    np.testing.assert_array_equal(again.tokens, char_ids(text, text))


def test_char_and_bpe_caches_of_one_text_coexist_and_nothing_is_written_beside_it(tmp_path):
    from tokenizer import ByteBPETokenizer
    text = "the quick brown fox jumps over the lazy dog. " * 40
    folder = tmp_path / "data"
    folder.mkdir()
    path = write_text(folder / "input.txt", text)
    before = sorted(os.listdir(folder))
    cache_dir = tmp_path / "cache"
    bpe = ByteBPETokenizer.train(text, 280)
    char_first = prepare_text_dataset(path, cache_dir=cache_dir)
    bpe_first = prepare_text_dataset(path, tokenizer=bpe, cache_dir=cache_dir)
    char_again = prepare_text_dataset(path, cache_dir=cache_dir)
    bpe_again = prepare_text_dataset(path, tokenizer=ByteBPETokenizer.from_dict(bpe.to_dict()), cache_dir=cache_dir)
    assert sorted(os.listdir(folder)) == before == ["input.txt"]
    assert char_first.token_path != bpe_first.token_path
    assert len(os.listdir(cache_dir)) == 4  # two token files, two sidecars
    for first, again in ((char_first, char_again), (bpe_first, bpe_again)):
        assert again.token_path == first.token_path
        assert again.token_path.stat().st_ino == first.token_path.stat().st_ino  # reused, not rewritten
    np.testing.assert_array_equal(char_again.tokens, char_ids(text, text))
    np.testing.assert_array_equal(bpe_again.tokens, bpe.encode(text))
    assert char_again.vocab_size == len(set(text)) and bpe_again.vocab_size == 280


def test_same_named_texts_in_different_folders_have_their_own_caches(tmp_path):
    for folder, text in (("a", "abab\n" * 20), ("b", "xyz\n" * 20)):
        (tmp_path / folder).mkdir()
        write_text(tmp_path / folder / "input.txt", text)
    first = prepare_text_dataset(tmp_path / "a" / "input.txt", cache_dir=tmp_path / "cache")
    second = prepare_text_dataset(tmp_path / "b" / "input.txt", cache_dir=tmp_path / "cache")
    again = prepare_text_dataset(tmp_path / "a" / "input.txt", cache_dir=tmp_path / "cache")
    assert first.token_path != second.token_path and again.token_path == first.token_path
    assert first.tokenizer.chars == ["\n", "a", "b"] and second.tokenizer.chars == ["\n", "x", "y", "z"]
    assert again.tokenizer.decode(again.tokens[:5].tolist()) == "abab\n"


def test_text_in_a_read_only_directory(tmp_path):
    text = random_text(np.random.default_rng(3), 500)
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    path = write_text(read_only / "corpus.txt", text)
    cache_dir = tmp_path / "cache"
    read_only.chmod(0o555)
    try:
        first = prepare_text_dataset(path, cache_dir=cache_dir)
        second = prepare_text_dataset(path, cache_dir=cache_dir)
    finally:
        read_only.chmod(0o755)
    assert os.listdir(read_only) == ["corpus.txt"]  # nothing written beside the text, even as root
    assert first.token_path.parent == cache_dir
    assert first.token_path.name.startswith("corpus.txt") and first.token_path.name.endswith(".tokens.uint16")
    assert second.token_path == first.token_path
    assert second.token_path.stat().st_ino == first.token_path.stat().st_ino  # the cache is reused
    np.testing.assert_array_equal(second.tokens, char_ids(text, text))


def test_tiny_shakespeare_from_the_read_only_shared_folder(tmp_path):
    shared_text = require_shared("data/tinyshakespeare.txt")
    dataset = prepare_text_dataset(shared_text, cache_dir=tmp_path)
    assert dataset.token_path.parent == tmp_path  # ../shared has no write bits and must stay untouched
    assert len(dataset.tokens) == 1_115_394  # ASCII: one token per byte
    assert dataset.vocab_size == 65  # as its PROVENANCE file says
    assert dataset.tokenizer.decode(dataset.tokens[:14]) == "First Citizen:"


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.txt"):
        prepare_text_dataset(tmp_path / "absent.txt", cache_dir=tmp_path)


def test_non_utf8_file(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café olé".encode("latin-1"))
    with pytest.raises(ValueError, match="UTF-8"):
        prepare_text_dataset(path, cache_dir=tmp_path)


def test_empty_file(tmp_path):
    path = write_text(tmp_path / "empty.txt", "")
    with pytest.raises(ValueError, match="empty"):
        prepare_text_dataset(path, cache_dir=tmp_path)


def test_too_few_tokens(tmp_path):
    path = write_text(tmp_path / "short.txt", "abc")
    with pytest.raises(ValueError, match="too few"):
        prepare_text_dataset(path, cache_dir=tmp_path)


def test_vocabulary_too_large_for_uint16(tmp_path):
    text = "".join(chr(0x10000 + i) for i in range(70_000))  # 70,000 distinct characters
    path = write_text(tmp_path / "wide.txt", text)
    with pytest.raises(ValueError, match="uint16"):
        prepare_text_dataset(path, cache_dir=tmp_path / "cache")
    assert os.listdir(tmp_path) == ["wide.txt"]


def test_unknown_character_for_a_given_tokenizer(corpus, tmp_path):
    path, _ = corpus
    with pytest.raises(ValueError, match="not in the vocabulary"):
        prepare_text_dataset(path, tokenizer=CharTokenizer.from_text("abc"), cache_dir=tmp_path)
    assert os.listdir(tmp_path) == ["corpus.txt"]  # no token file, no temporary file left


@pytest.mark.parametrize("val_fraction", [0.0, 1.0, -0.1, 1.5])
def test_bad_val_fraction(corpus, tmp_path, val_fraction):
    path, _ = corpus
    with pytest.raises(ValueError, match="val_fraction"):
        prepare_text_dataset(path, val_fraction=val_fraction, cache_dir=tmp_path)


@pytest.mark.parametrize(
    "arguments, error, message",
    [
        ({"split": "test"}, ValueError, "split"),
        ({"block_size": 100}, ValueError, "block_size"),  # the val split has 100 tokens: one too few
        ({"block_size": 0}, ValueError, "block_size"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"rng": 0}, TypeError, "Generator"),
        ({"rng": np.random.RandomState(0)}, TypeError, "Generator"),
    ],
)
def test_get_batch_rejects_bad_arguments(corpus, tmp_path, arguments, error, message):
    path, _ = corpus
    dataset = prepare_text_dataset(path, cache_dir=tmp_path)
    call = {"split": "val", "batch_size": 2, "block_size": 8, "rng": np.random.default_rng(0), **arguments}
    with pytest.raises(error, match=message):
        dataset.get_batch(**call)


def test_block_size_equal_to_split_minus_one_works(corpus, tmp_path):
    path, _ = corpus
    dataset = prepare_text_dataset(path, cache_dir=tmp_path)
    x, _ = dataset.get_batch("val", 2, 99, np.random.default_rng(0))
    assert x.shape == (2, 99)


def test_cli_prepare(corpus, tmp_path, capsys):
    path, _ = corpus
    assert data.main(["prepare", str(path), "--cache-dir", str(tmp_path / "cache")]) == 0
    output = capsys.readouterr().out
    assert "1,000 tokens (train 900, val 100)" in output
    assert "vocab_size 10" in output


def test_cli_reports_errors(tmp_path, capsys):
    assert data.main(["prepare", str(tmp_path / "absent.txt")]) == 1
    assert "absent.txt" in capsys.readouterr().err


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        data.main(["--help"])
    assert exit_info.value.code == 0
    output = capsys.readouterr().out
    assert "shakespeare" in output and "prepare" in output


# ----------------------------------------------------------------------------------------------
# SortingTask


def test_sorting_batches():
    task = SortingTask(length=6, num_digits=3)
    assert task.vocab_size == 3 and task.block_size == 11
    x, y = task.get_batch(64, np.random.default_rng(0))
    assert x.shape == y.shape == (64, 11)
    assert x.dtype == y.dtype == np.int64
    problems = x[:, :6]
    answers = np.sort(problems, axis=1)
    assert problems.min() >= 0 and problems.max() <= 2
    np.testing.assert_array_equal(x[:, 6:], answers[:, :5])  # the answer so far, read while predicting
    np.testing.assert_array_equal(y[:, 5:], answers)  # targets: the sorted digits
    assert np.all(y[:, :5] == IGNORE_INDEX)  # no loss while the problem is being read


def test_sorting_example_by_hand():
    # A single batch row checked against the layout written out by hand.
    task = SortingTask(length=4, num_digits=5)
    x, y = task.get_batch(1, np.random.default_rng(0))
    problem = [int(digit) for digit in x[0, :4]]
    answer = sorted(problem)
    assert x[0].tolist() == problem + answer[:3]
    assert y[0].tolist() == [-100, -100, -100] + answer


def test_sorting_train_and_test_problems_are_disjoint():
    task = SortingTask(length=6, num_digits=3)
    rng = np.random.default_rng(1)
    train = {tuple(row) for row in task.get_batch(3000, rng, split="train")[0][:, :6]}
    test = {tuple(row) for row in task.sample_problems(3000, rng, split="test")}
    assert not train & test
    # 3^6 = 729 problems, about a quarter held out; 3,000 draws see nearly all of each split.
    assert 450 < len(train) < 640 and 120 < len(test) < 260
    assert len(train) + len(test) > 700


def test_sorting_batches_are_reproducible():
    task = SortingTask()
    first = task.get_batch(8, np.random.default_rng(5))
    again = task.get_batch(8, np.random.default_rng(5))
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])


def test_exact_match_accuracy():
    task = SortingTask(length=6, num_digits=3)
    seen_prompts = []

    def oracle(prompts):
        seen_prompts.append(prompts.copy())
        return np.sort(prompts, axis=1)

    def right_on_every_other_row(prompts):
        predictions = np.sort(prompts, axis=1)
        predictions[::2, -1] = (predictions[::2, -1] + 1) % 3  # one wrong digit spoils the row
        return predictions

    assert task.exact_match_accuracy(oracle, 200, np.random.default_rng(2)) == 1.0
    assert seen_prompts[0].shape == (200, 6)
    assert not np.any(task.is_test_problem(seen_prompts[0]) == 0)  # scored on held-out problems
    assert task.exact_match_accuracy(right_on_every_other_row, 200, np.random.default_rng(2)) == 0.5
    assert task.exact_match_accuracy(lambda prompts: prompts, 200, np.random.default_rng(2)) < 1.0


def test_exact_match_accuracy_rejects_wrong_shapes():
    task = SortingTask()
    with pytest.raises(ValueError, match="shape"):
        task.exact_match_accuracy(lambda prompts: prompts[:, :3], 10, np.random.default_rng(0))


@pytest.mark.parametrize(
    "arguments",
    [{"length": 1}, {"num_digits": 1}, {"length": 2.5}, {"test_fraction": 0.0}, {"test_fraction": 1.0}],
)
def test_sorting_task_rejects_bad_arguments(arguments):
    with pytest.raises(ValueError):
        SortingTask(**arguments)


# ----------------------------------------------------------------------------------------------
# download_shakespeare against a real HTTP server on 127.0.0.1

BODY = np.random.default_rng(9).integers(0, 256, size=150_000).astype(np.uint8).tobytes()
BODY_SHA256 = hashlib.sha256(BODY).hexdigest()


class FileHandler(http.server.BaseHTTPRequestHandler):
    """Serves BODY at /corpus.txt and half of it, announced at full length, at /truncated.txt."""

    def do_GET(self):
        self.server.requests.append(self.path)
        if self.path == "/corpus.txt":
            body, announced_length = BODY, len(BODY)
        elif self.path == "/truncated.txt":
            body, announced_length = BODY[: len(BODY) // 2], len(BODY)
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(announced_length))
        self.end_headers()
        self.wfile.write(body)
        # HTTP/1.0 (the handler's default) closes the connection when this method returns.

    def log_message(self, format, *args):
        pass  # keep the test output clean


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FileHandler)
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def url_of(server, path):
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


@pytest.fixture
def refused_url():
    """A URL on a port where nothing listens: connecting is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/corpus.txt"


def download(cache_dir, url, **overrides):
    arguments = {"progress": False, "expected_size": len(BODY), "expected_sha256": BODY_SHA256, **overrides}
    return download_shakespeare(cache_dir, url=url, **arguments)


def test_download_succeeds(server, tmp_path):
    path = download(tmp_path / "cache", url_of(server, "/corpus.txt"))
    assert path.parent == tmp_path / "cache"
    assert path.read_bytes() == BODY
    assert os.listdir(tmp_path / "cache") == [path.name]  # no temporary file left behind


def test_download_shows_progress(server, tmp_path, capsys):
    download(tmp_path, url_of(server, "/corpus.txt"), progress=True)
    assert "150,000 / 150,000 bytes (100%)" in capsys.readouterr().err


def test_cached_file_is_returned_without_downloading(server, tmp_path, refused_url):
    first = download(tmp_path, url_of(server, "/corpus.txt"))
    n_requests = len(server.requests)
    assert download(tmp_path, refused_url) == first  # the server is not even reachable at this URL
    assert len(server.requests) == n_requests


def test_corrupt_cached_file_is_downloaded_again(server, tmp_path):
    (tmp_path / data.SHAKESPEARE_FILENAME).write_bytes(b"x" * len(BODY))
    assert download(tmp_path, url_of(server, "/corpus.txt")).read_bytes() == BODY


def test_http_404(server, tmp_path):
    url = url_of(server, "/missing.txt")
    with pytest.raises(DownloadError, match="404") as error:
        download(tmp_path, url)
    assert url in str(error.value)
    assert os.listdir(tmp_path) == []


def test_truncated_response(server, tmp_path):
    url = url_of(server, "/truncated.txt")
    with pytest.raises(DownloadError, match="truncated download: received 75,000 of 150,000 bytes") as error:
        download(tmp_path, url)
    assert url in str(error.value)
    assert os.listdir(tmp_path) == []


def test_sha256_mismatch(server, tmp_path):
    with pytest.raises(DownloadError, match="SHA-256"):
        download(tmp_path, url_of(server, "/corpus.txt"), expected_sha256="0" * 64)
    assert os.listdir(tmp_path) == []


def test_size_mismatch(server, tmp_path):
    with pytest.raises(DownloadError, match="expected 150,001"):
        download(tmp_path, url_of(server, "/corpus.txt"), expected_size=len(BODY) + 1)
    assert os.listdir(tmp_path) == []


def test_connection_refused(tmp_path, refused_url):
    with pytest.raises(DownloadError, match="could not connect") as error:
        download(tmp_path, refused_url)
    # Offline, the message says what to do: the URL, where to put the file, and train.py --data.
    assert refused_url in str(error.value)
    assert f"save it as {tmp_path / data.SHAKESPEARE_FILENAME}" in str(error.value)
    assert "train.py --data PATH" in str(error.value)
    assert os.listdir(tmp_path) == []


def test_cli_offline_says_what_to_do(tmp_path, monkeypatch, capsys):
    def offline(url, timeout):
        raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))
    monkeypatch.setattr(data.urllib.request, "urlopen", offline)
    assert data.main(["shakespeare", "--cache-dir", str(tmp_path)]) == 1
    message = capsys.readouterr().err
    assert len(message.strip().splitlines()) == 1 and message.startswith("error: ")
    for part in ("could not connect", data.SHAKESPEARE_URL, str(tmp_path / data.SHAKESPEARE_FILENAME), "--data PATH"):
        assert part in message


def test_failed_download_keeps_the_previous_file(server, tmp_path):
    old = tmp_path / data.SHAKESPEARE_FILENAME
    old.write_bytes(b"an older, unverified copy")
    with pytest.raises(DownloadError):
        download(tmp_path, url_of(server, "/truncated.txt"))
    assert old.read_bytes() == b"an older, unverified copy"
    assert os.listdir(tmp_path) == [old.name]


def test_default_checksum_matches_the_real_file(tmp_path, refused_url, capsys):
    # The shared copy is the canonical file: with the default size and SHA-256 it counts as already
    # downloaded, both for the function and for the command line.
    shutil.copy(require_shared("data/tinyshakespeare.txt"), tmp_path / data.SHAKESPEARE_FILENAME)
    path = download_shakespeare(tmp_path, url=refused_url, progress=False)
    assert path == tmp_path / data.SHAKESPEARE_FILENAME
    assert data.main(["shakespeare", "--cache-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(path)


def test_a_bpe_tokenized_cache_is_not_reused_for_characters(tmp_path):
    from tokenizer import ByteBPETokenizer
    text = "the quick brown fox jumps over the lazy dog. " * 40
    path = tmp_path / "text.txt"
    path.write_text(text)
    bpe = ByteBPETokenizer.train(text, 280)
    bpe_dataset = prepare_text_dataset(path, tokenizer=bpe, cache_dir=tmp_path / "cache")
    assert bpe_dataset.vocab_size == 280
    assert len(bpe_dataset.tokens) == len(bpe.encode(text))
    char_dataset = prepare_text_dataset(path, cache_dir=tmp_path / "cache")
    assert char_dataset.vocab_size == len(set(text))
    assert len(char_dataset.tokens) == len(text)

"""fastdata convert --tokenize: token shards equal the tokenizer applied to each document,
labels, parallel = serial, resume, bad inputs, webdataset and fastdata verify."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from token_fixtures import SENTENCES, train_bpe, write_tiktoken

from fastdata.cli import main
from fastdata.convert.tokenize import TokenizeOptions, convert_tokens
from fastdata.errors import FastdataError, SourceError
from fastdata.shards.index import read_index
from fastdata.shards.tokens import open_token_shard
from fastdata.shards.verify import verify


def documents(n: int = 23, seed: int = 0) -> list[str]:
    """Random documents built from the fixture sentences (some long, some short)."""
    rng = np.random.default_rng(seed)
    words = " ".join(SENTENCES).split()
    return [" ".join(rng.choice(words, rng.integers(1, 40))) + f" #{i}" for i in range(n)]


def text_folder(root, docs: list[str], classes=("neg", "pos")) -> list[tuple[str, str]]:
    """Writes ``root/<class>/dNNN.txt``; returns (class, text) in the source's order."""
    written = []
    for i, text in enumerate(docs):
        cls = classes[i % len(classes)]
        os.makedirs(root / cls, exist_ok=True)
        (root / cls / f"d{i:03d}.txt").write_text(text, encoding="utf-8")
        written.append((cls, f"d{i:03d}", text))
    written.sort()
    return [(c, t) for c, _, t in written]


def read_all(index_path: str) -> tuple[list[np.ndarray], list[int], dict]:
    """Every document's tokens (in order), labels, and the index."""
    index = read_index(index_path)
    folder = os.path.dirname(index_path)
    docs, labels = [], []
    for entry in index["shards"]:
        shard = open_token_shard(os.path.join(folder, entry["name"]), entry["tokens_offset"])
        docs += [np.array(shard.document(i)) for i in range(shard.num_documents)]
        labels += [] if shard.labels is None else shard.labels.tolist()
    return docs, labels, index


def expected(tok, texts: list[str]) -> list[list[int]]:
    return [tok.encode(t) + [tok.eod] for t in texts]


@pytest.fixture(params=["bytes", "bpe", "tiktoken"])
def tokenizer(request, tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("tok"))
    if request.param == "bytes":
        return "bytes"
    pytest.importorskip("tokenizers" if request.param == "bpe" else "tiktoken")
    return train_bpe(folder) if request.param == "bpe" else write_tiktoken(folder)


def test_tokens_are_the_tokenizer_applied_to_each_document(tmp_path, tokenizer):
    from fastdata.convert.tokenizers import load_tokenizer

    written = text_folder(tmp_path / "src", documents())
    report = convert_tokens(str(tmp_path / "src"), str(tmp_path / "out/t-%06d.tar"),
                            TokenizeOptions(tokenizer=tokenizer, tokens_per_shard=300))
    docs, labels, index = read_all(report.index_path)
    tok = load_tokenizer(tokenizer)  # the reference: the tokenizer applied to each text alone
    assert [d.tolist() for d in docs] == expected(tok, [t for _, t in written])
    assert labels == [{"neg": 0, "pos": 1}[c] for c, _ in written]
    assert index["labels"] == {"neg": 0, "pos": 1}
    assert (index["tokens"], index["documents"]) == (sum(map(len, docs)), len(written))
    assert (index["vocab_size"], index["eod"]) == (tok.vocab_size, tok.eod)
    assert len(index["shards"]) > 1 and all(s["count"] == 1 for s in index["shards"])
    assert verify(report.index_path) == ([], len(index["shards"]))


def test_bytes_shards_hold_at_most_tokens_per_shard(tmp_path):
    text_folder(tmp_path / "src", documents(40))
    report = convert_tokens(str(tmp_path / "src"), str(tmp_path / "out/t-%06d.tar"),
                            TokenizeOptions(tokens_per_shard=400))
    sizes = [s["tokens"] for s in report.shards]
    assert max(sizes) <= 400 and sum(sizes) == report.tokens
    assert min(sizes[:-1]) > 400 - 300  # cut only when the next document does not fit


@pytest.mark.parametrize("workers", [1, 2])
def test_parallel_output_is_byte_identical(tmp_path, workers):
    pytest.importorskip("tokenizers")
    text_folder(tmp_path / "src", documents(30))
    bpe = train_bpe(str(tmp_path))
    runs = {}
    for j in (0, workers):
        out = tmp_path / f"out{j}"
        convert_tokens(str(tmp_path / "src"), str(out / "t-%06d.tar"),
                       TokenizeOptions(tokenizer=bpe, tokens_per_shard=200, workers=j, shuffle_seed=3))
        runs[j] = {name: (out / name).read_bytes() for name in sorted(os.listdir(out))}
    assert len(runs[0]) > 3
    serial, parallel = runs[0], runs[workers]
    index0 = json.loads(serial.pop("t.index.json"))
    index1 = json.loads(parallel.pop("t.index.json"))
    assert serial == parallel
    assert index0["shards"] == index1["shards"]


def test_jsonl_manifest_with_string_labels(tmp_path):
    texts = documents(9)
    names = ["sports", "arts", "news"]
    with open(tmp_path / "m.jsonl", "w") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({"body": text, "topic": names[i % 3]}) + "\n")
        f.write("\n")
    report = convert_tokens(str(tmp_path / "m.jsonl"), str(tmp_path / "out/t-%06d.tar"),
                            TokenizeOptions(text_column="body", label_column="topic"))
    docs, labels, index = read_all(report.index_path)
    assert [bytes(d[:-1].astype(np.uint8)).decode() for d in docs] == texts
    assert index["labels"] == {"arts": 0, "news": 1, "sports": 2}
    assert labels == [index["labels"][names[i % 3]] for i in range(9)]


def test_csv_manifest_and_cli(tmp_path, capsys):
    texts = ["first, with a comma", "second\nspans two lines", "third"]
    with open(tmp_path / "m.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows([[t, i % 2] for i, t in enumerate(texts)] + [["", 1]])
    code = main(["convert", "--tokenize", "bytes", str(tmp_path / "m.csv"), str(tmp_path / "out/t-%06d.tar"),
                 "--no-progress"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "skipped 1 empty document" in out
    docs, labels, index = read_all(str(tmp_path / "out/t.index.json"))
    assert [bytes(d[:-1].astype(np.uint8)).decode() for d in docs] == texts
    assert labels == [0, 1, 0] and index["labels"] is None
    assert [s["source"] for s in index["skipped"]] == [f"{tmp_path / 'm.csv'} row 4 (line 6)"]
    assert main(["verify", str(tmp_path / "out/t.index.json")]) == 0


def test_webdataset_reads_the_shards(tmp_path):
    wds = pytest.importorskip("webdataset")
    written = text_folder(tmp_path / "src", documents(12))
    report = convert_tokens(str(tmp_path / "src"), str(tmp_path / "out/t-%06d.tar"),
                            TokenizeOptions(tokens_per_shard=300))
    urls = [str(tmp_path / "out" / s["name"]) for s in report.shards]
    texts = []
    for sample in wds.WebDataset(urls, shardshuffle=False).decode():
        tokens, docs = sample["tokens.npy"], sample["docs.npy"]
        texts += [bytes(tokens[a : b - 1].astype(np.uint8)).decode() for a, b in zip(docs[:-1], docs[1:], strict=True)]
    assert texts == [t for _, t in written]


def test_resume_reuses_finished_shards(tmp_path):
    src = tmp_path / "src"
    text_folder(src, documents(20))
    bad = sorted(src.rglob("*.txt"))[-1]
    good = bad.read_bytes()
    bad.write_bytes(b"\xff\xfe not utf-8")
    pattern = str(tmp_path / "out/t-%06d.tar")
    options = TokenizeOptions(tokens_per_shard=400)
    with pytest.raises(SourceError, match=rf"{bad.name}: not valid UTF-8 text .*--drop-corrupt"):
        convert_tokens(str(src), pattern, options)
    finished = sorted(os.listdir(tmp_path / "out/t.index.json.parts"))
    assert len(finished) > 2  # plan.json and the parts of the shards before the bad file
    bad.write_bytes(good)
    report = convert_tokens(str(src), pattern, options)
    assert report.resumed_shards == len(finished) - 1
    assert not os.path.exists(tmp_path / "out/t.index.json.parts")
    fresh = convert_tokens(str(src), str(tmp_path / "fresh/t-%06d.tar"), options)
    assert [s["sha256"] for s in fresh.shards] == [s["sha256"] for s in report.shards]


def test_drop_corrupt_and_empty_documents(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("hello")
    (src / "b.txt").write_bytes(b"caf\xe9")  # Latin-1, not UTF-8
    (src / "c.txt").write_text("  \n")
    (src / "d.txt").write_text("world")
    report = convert_tokens(str(src), str(tmp_path / "out/t-%06d.tar"), TokenizeOptions(drop_corrupt=True))
    docs, labels, index = read_all(report.index_path)
    assert [bytes(d[:-1].astype(np.uint8)).decode() for d in docs] == ["hello", "world"]
    assert labels == [] and index["labels"] is None
    assert [(os.path.basename(s["source"]), s["reason"].split(" (")[0]) for s in report.skipped] == [
        ("b.txt", "not valid UTF-8 text"), ("c.txt", "empty document")]  # fmt: skip
    assert report.empty == 1


def test_dedupe_stores_identical_documents_once(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name, text in [("a", "one"), ("b", "two"), ("c", "one"), ("d", "three"), ("e", "two")]:
        (src / f"{name}.txt").write_text(text)
    report = convert_tokens(str(src), str(tmp_path / "out/t-%06d.tar"), TokenizeOptions(dedupe=True))
    docs, _, _ = read_all(report.index_path)
    assert [bytes(d[:-1].astype(np.uint8)).decode() for d in docs] == ["one", "two", "three"]
    assert [(d["key"], d["duplicate_of"]) for d in report.duplicates] == [("c", "a"), ("e", "b")]


def test_bad_jsonl_lines_are_named(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n{"text": 3}\n{"other": "x"}\nnot json\n')
    with pytest.raises(SourceError, match=r"m\.jsonl line 2: the line is not valid UTF-8.*--drop-corrupt"):
        convert_tokens(str(path), str(tmp_path / "out/t-%06d.tar"))
    report = convert_tokens(str(path), str(tmp_path / "out/t-%06d.tar"), TokenizeOptions(drop_corrupt=True))
    assert report.documents == 1
    assert [s["source"].rsplit(" ", 2)[-2:] for s in report.skipped] == [["line", "2"], ["line", "3"],
                                                                         ["line", "4"], ["line", "5"]]  # fmt: skip
    assert "is a int, not a string" in report.skipped[1]["reason"]


def test_missing_text_column(tmp_path):
    (tmp_path / "m.csv").write_text("body,label\nhello,1\n")
    with pytest.raises(SourceError, match=r"m\.csv: no column 'text' \(columns: body, label\); .*--text-column"):
        convert_tokens(str(tmp_path / "m.csv"), str(tmp_path / "out/t-%06d.tar"))


def test_document_longer_than_a_shard(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "long.txt").write_text("x" * 100)
    with pytest.raises(SourceError, match=r"long\.txt: the document has 101 tokens.*--tokens-per-shard 64.*128"):
        convert_tokens(str(src), str(tmp_path / "out/t-%06d.tar"), TokenizeOptions(tokens_per_shard=64))


def test_tokenizer_problems(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("hello")
    out = str(tmp_path / "out/t-%06d.tar")
    with pytest.raises(SourceError, match=r"nope\.json: no such tokenizer file; --tokenize accepts"):
        convert_tokens(str(src), out, TokenizeOptions(tokenizer=str(tmp_path / "nope.json")))
    with pytest.raises(SourceError, match=r"a\.txt: not a tokenizer file of a known kind"):
        convert_tokens(str(src), out, TokenizeOptions(tokenizer=str(src / "a.txt")))


def test_vocabulary_too_large_for_uint16(tmp_path):
    pytest.importorskip("tiktoken")
    import base64

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("hello")
    path = tmp_path / "big.tiktoken"
    with open(path, "w") as f:  # 256 bytes plus enough two-byte merges to pass 65536 ids
        f.writelines(f"{base64.b64encode(bytes([i])).decode()} {i}\n" for i in range(256))
        f.writelines(f"{base64.b64encode(bytes([i // 256, i % 256])).decode()} {i}\n" for i in range(256, 65536))
    out = str(tmp_path / "out/t-%06d.tar")
    with pytest.raises(FastdataError, match=r"65537 ids, more than --dtype uint16 holds.*--dtype uint32"):
        convert_tokens(str(src), out, TokenizeOptions(tokenizer=str(path), dtype="uint16"))
    report = convert_tokens(str(src), out, TokenizeOptions(tokenizer=str(path)))
    assert report.shards[0]["dtype"] == "uint32"

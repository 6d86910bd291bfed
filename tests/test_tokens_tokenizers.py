"""load_tokenizer: built-in bytes, Hugging Face tokenizer.json and tiktoken files, checked
against the libraries themselves."""

from __future__ import annotations

import pytest
from token_fixtures import SENTENCES, train_bpe, write_tiktoken

from fastdata.convert.tokenizers import CL100K_PATTERN, load_tokenizer
from fastdata.errors import SourceError


def test_bytes():
    tok = load_tokenizer("bytes")
    assert (tok.vocab_size, tok.eod, tok.pad, tok.name) == (258, 256, 257, "bytes")
    for text in SENTENCES:
        assert tok.encode(text) == list(text.encode("utf-8"))
        assert tok.decode(tok.encode(text) + [tok.eod, tok.pad]) == text
    assert [a.tolist() for a in tok.encode_arrays(SENTENCES)] == [list(s.encode()) for s in SENTENCES]


def test_huggingface(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    path = train_bpe(str(tmp_path))
    ref = tokenizers.Tokenizer.from_file(path)
    tok = load_tokenizer(path)
    assert tok.eod == ref.token_to_id("<|endoftext|>")
    assert tok.vocab_size == ref.get_vocab_size()
    for text in SENTENCES:
        assert tok.encode(text) == ref.encode(text, add_special_tokens=False).ids
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode_batch(SENTENCES) == [ref.encode(t, add_special_tokens=False).ids for t in SENTENCES]
    assert load_tokenizer(str(tmp_path)).digest == tok.digest  # a folder holding tokenizer.json


def test_huggingface_without_an_end_token_gets_a_new_id(tmp_path):
    pytest.importorskip("tokenizers")
    tok = load_tokenizer(train_bpe(str(tmp_path), special=None))
    assert tok.eod == tok.vocab_size - 1
    assert max(max(tok.encode(t)) for t in SENTENCES) < tok.eod


def test_tiktoken(tmp_path):
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import load_tiktoken_bpe

    path = write_tiktoken(str(tmp_path))
    ranks = load_tiktoken_bpe(path)
    ref = tiktoken.Encoding("ref", pat_str=CL100K_PATTERN, mergeable_ranks=ranks, special_tokens={})
    tok = load_tokenizer(path)
    assert tok.eod == len(ranks) and tok.vocab_size == len(ranks) + 1
    for text in SENTENCES:
        assert tok.encode(text) == ref.encode_ordinary(text)
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode("the thing")[0] == ranks[b"the"]


def test_tiktoken_file_rewritten_in_place_is_read_again(tmp_path):
    pytest.importorskip("tiktoken")
    path = write_tiktoken(str(tmp_path))
    first = load_tokenizer(path)
    with open(path, "a") as f:
        f.write("eHl6 263\n")  # "xyz"
    assert load_tokenizer(path).vocab_size == first.vocab_size + 1


@pytest.mark.parametrize("content", [b"hello, this is not a tokenizer\n", b"", b"{not json"])
def test_other_files_are_named_with_the_accepted_kinds(tmp_path, content):
    path = tmp_path / "thing.json"
    path.write_bytes(content)
    with pytest.raises(SourceError, match=r"thing\.json.*accepts 'bytes'.*tokenizer\.json.*tiktoken"):
        load_tokenizer(str(path))


def test_missing_file(tmp_path):
    with pytest.raises(SourceError, match=r"nope\.json: no such tokenizer file; --tokenize accepts"):
        load_tokenizer(str(tmp_path / "nope.json"))


def test_missing_library_says_how_to_install(tmp_path, monkeypatch):
    import builtins

    path = write_tiktoken(str(tmp_path))
    real = builtins.__import__

    def no_tiktoken(name, *args, **kwargs):
        if name == "tiktoken":
            raise ImportError("no tiktoken")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tiktoken)
    with pytest.raises(SourceError, match=r"pip install 'fastdata\[text\]'"):
        load_tokenizer(path)

"""fastdata convert: sources, labels, options, parallel identity, resumption, bad input."""

from __future__ import annotations

import io
import json
import os
import sys

import numpy as np
import pytest
from PIL import Image
from test_remote import served  # noqa: F401  (the local HTTP server fixture)
from torchvision.datasets import ImageFolder

import fastdata.convert.prepare as prepare_mod
from fastdata import FastdataError, ShardWriter, SourceError, iter_samples
from fastdata.cli import main
from fastdata.convert.command import ConvertOptions, convert
from fastdata.convert.prepare import PrepareOptions
from fastdata.shards.index import read_index, shard_urls


def write_image(path, rng, size=None, mode="RGB", fmt=None):
    w, h = size or (int(rng.integers(20, 60)), int(rng.integers(20, 60)))
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    pixels = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    image = Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels, mode)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path, format=fmt)
    return pixels


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "photos"
    for cls, n in [("zebra", 5), ("ant", 7), ("Moth", 4)]:
        for i in range(n):
            ext = ["jpg", "png", "JPEG"][i % 3]
            write_image(str(root / cls / f"img.{i}.{ext}"), rng, mode=["RGB", "RGBA", "L"][i % 3],
                        fmt="PNG" if ext == "png" else "JPEG")
    (root / "ant" / "notes.txt").write_text("not an image")
    return root


def read_all(index_path):
    index = read_index(str(index_path))
    return index, list(iter_samples(shard_urls(str(index_path), index)))


def test_image_folder_follows_torchvision_order_labels_and_bytes(folder, tmp_path):
    report = convert(str(folder), str(tmp_path / "out/train-%06d.tar"), ConvertOptions(maxcount=6))
    index, samples = read_all(report.index_path)
    reference = ImageFolder(str(folder))
    assert index["label_map"] == reference.class_to_idx
    assert len(samples) == len(reference.samples) == index["num_samples"] == 16
    for sample, (path, label) in zip(samples, reference.samples, strict=True):
        rel = os.path.relpath(path, folder)
        assert sample["__key__"] == os.path.splitext(rel)[0].replace(".", "_")
        ext = "jpg" if path.lower().endswith(("jpg", "jpeg")) else "png"
        assert sample[ext] == open(path, "rb").read()
        assert int(sample["cls"]) == label
    assert [s["count"] for s in index["shards"]] == [6, 6, 4]
    expected_counts = {str(c): reference.targets.count(c) for c in sorted(set(reference.targets))}
    assert index["stats"]["class_counts"] == expected_counts == {"0": 4, "1": 7, "2": 5}


def test_parallel_output_is_identical_to_serial(folder, tmp_path):
    reports = [
        convert(str(folder), str(tmp_path / f"w{w}/s-%04d.tar"), ConvertOptions(maxcount=5, workers=w, shuffle_seed=3))
        for w in (0, 2)
    ]
    assert [s["sha256"] for s in reports[0].shards] == [s["sha256"] for s in reports[1].shards]
    assert read_index(reports[0].index_path)["stats"] == read_index(reports[1].index_path)["stats"]


def test_seeded_shuffle_is_a_permutation(folder, tmp_path):
    keys = {}
    for name, seed in [("a", 5), ("b", 5), ("c", 6), ("none", None)]:
        report = convert(str(folder), str(tmp_path / f"{name}/s-%d.tar"), ConvertOptions(shuffle_seed=seed))
        keys[name] = [s["__key__"] for s in read_all(report.index_path)[1]]
    assert keys["a"] == keys["b"] != keys["c"]
    assert sorted(keys["a"]) == sorted(keys["none"]) and keys["a"] != keys["none"]


@pytest.mark.parametrize("maxcount", [10_000, 2])  # one shard, or three shard parts merged
def test_statistics_match_float64_numpy(tmp_path, maxcount):
    rng = np.random.default_rng(2)
    images = [write_image(str(tmp_path / f"src/c{i % 2}/{i}.png"), rng, fmt="PNG") for i in range(6)]
    report = convert(str(tmp_path / "src"), str(tmp_path / "o/s-%d.tar"), ConvertOptions(maxcount=maxcount))
    assert len(report.shards) == 6 // min(maxcount, 6)
    stats = read_index(report.index_path)["stats"]
    pixels = np.concatenate([im.reshape(-1, 3) for im in images]).astype(np.float64) / 255
    np.testing.assert_allclose(stats["mean"], pixels.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(stats["std"], pixels.std(axis=0), atol=1e-6)
    assert sum(stats["sizes"].values()) == 6
    assert sum(stats["size_histogram"]["width"]["counts"]) == 6


def test_manifest_with_string_labels_and_missing_file(tmp_path):
    rng = np.random.default_rng(3)
    for i in range(4):
        write_image(str(tmp_path / f"imgs/{i}.jpg"), rng, fmt="JPEG")
    rows = ["path,label", "imgs/0.jpg,dog", "imgs/1.jpg,cat", "imgs/2.jpg,dog", "imgs/3.jpg,bird"]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    report = convert(str(tmp_path / "m.csv"), str(tmp_path / "o/s-%d.tar"))
    index, samples = read_all(report.index_path)
    assert index["label_map"] == {"bird": 0, "cat": 1, "dog": 2}
    assert [int(s["cls"]) for s in samples] == [2, 1, 2, 0]
    (tmp_path / "bad.csv").write_text("path,label\nimgs/0.jpg,1\nimgs/missing.jpg,2\n")
    with pytest.raises(SourceError, match=r"bad\.csv line 3 .*missing\.jpg.*cannot read"):
        convert(str(tmp_path / "bad.csv"), str(tmp_path / "o2/s-%d.tar"))
    report = convert(str(tmp_path / "bad.csv"), str(tmp_path / "o3/s-%d.tar"), ConvertOptions(drop_corrupt=True))
    assert report.written == 1 and "missing.jpg" in report.skipped[0]["source"]


def test_jsonl_manifest_and_integer_label_rule(tmp_path):
    rng = np.random.default_rng(4)
    write_image(str(tmp_path / "a.png"), rng, fmt="PNG")
    (tmp_path / "m.jsonl").write_text('{"path": "a.png", "label": 3}\n{"path": "a.png", "label": "x"}\n')
    with pytest.raises(SourceError, match="line 2: label 'x' is not an integer"):
        convert(str(tmp_path / "m.jsonl"), str(tmp_path / "o/s-%d.tar"), int_labels=True)
    (tmp_path / "ok.jsonl").write_text('{"path": "a.png", "label": 3}\n')
    index, samples = read_all(convert(str(tmp_path / "ok.jsonl"), str(tmp_path / "o/s-%d.tar")).index_path)
    assert samples[0]["cls"] == b"3" and index["label_map"] is None


def test_arrays_become_npy_samples(tmp_path):
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (9, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, 4, 9)
    np.savez(tmp_path / "d.npz", images=images, labels=labels)
    index, samples = read_all(convert(str(tmp_path / "d.npz"), str(tmp_path / "o/s-%d.tar")).index_path)
    assert len(samples) == 9
    for sample, image, label in zip(samples, images, labels, strict=True):
        assert np.array_equal(np.load(io.BytesIO(sample["npy"])), image) and int(sample["cls"]) == label


def test_reencode_and_raw(folder, tmp_path):
    opts = ConvertOptions(prepare=PrepareOptions(max_side=24, quality=80))
    _, samples = read_all(convert(str(folder), str(tmp_path / "re/s-%d.tar"), opts).index_path)
    for s in samples:
        image = Image.open(io.BytesIO(s["jpg"]))
        assert image.format == "JPEG" and max(image.size) <= 24 and set(s) == {"__key__", "__url__", "jpg", "cls"}
    raw = ConvertOptions(prepare=PrepareOptions(raw=True))
    _, samples = read_all(convert(str(folder), str(tmp_path / "raw/s-%d.tar"), raw).index_path)
    reference = ImageFolder(str(folder))
    for s, (path, _) in zip(samples, reference.samples, strict=True):
        assert np.array_equal(np.load(io.BytesIO(s["npy"])), np.asarray(Image.open(path).convert("RGB")))


def test_dedupe_and_corrupt_images(folder, tmp_path):
    (folder / "ant" / "copy.jpg").write_bytes((folder / "ant" / "img.0.jpg").read_bytes())
    good = (folder / "zebra" / "img.0.jpg").read_bytes()
    (folder / "zebra" / "broken.jpg").write_bytes(good[: len(good) // 2])
    (folder / "zebra" / "garbage.png").write_bytes(b"not a png at all")
    with pytest.raises(SourceError, match="broken.jpg: not a readable image: image file is truncated"):
        convert(str(folder), str(tmp_path / "a/s-%d.tar"))
    opts = ConvertOptions(drop_corrupt=True, dedupe=True, prepare=PrepareOptions(check_decode=True))
    report = convert(str(folder), str(tmp_path / "b/s-%d.tar"), opts)
    assert sorted(os.path.basename(s["source"]) for s in report.skipped) == ["broken.jpg", "garbage.png"]
    assert [(d["key"], d["duplicate_of"]) for d in report.duplicates] == [("ant/img_0", "ant/copy")]
    assert report.written == 16


def test_dedupe_across_shards_equals_one_sequential_pass(folder, tmp_path):
    (folder / "ant" / "copy.jpg").write_bytes((folder / "zebra" / "img.3.jpg").read_bytes())
    good = (folder / "ant" / "img.0.jpg").read_bytes()
    (folder / "Moth" / "broken.jpg").write_bytes(good[: len(good) // 2])
    (folder / "zebra" / "broken_too.jpg").write_bytes(good[: len(good) // 2])  # a duplicate of a corrupt file
    reports = [convert(str(folder), str(tmp_path / f"m{m}/s-%d.tar"),
                       ConvertOptions(maxcount=m, dedupe=True, drop_corrupt=True, shuffle_seed=0))
               for m in (10_000, 2)]  # fmt: skip
    one, many = reports
    assert len(one.shards) == 1 and len(many.shards) > 5
    assert one.duplicates == many.duplicates and len(one.duplicates) == 1
    assert one.skipped == many.skipped
    assert sorted(os.path.basename(s["source"]) for s in one.skipped) == ["broken.jpg", "broken_too.jpg"]
    keys = [[s["__key__"] for s in read_all(r.index_path)[1]] for r in reports]
    assert keys[0] == keys[1] and len(keys[0]) == one.written == 16


def test_a_shard_whose_samples_are_all_dropped_is_written_empty(folder, tmp_path):
    """No gap in the numbering: a brace pattern over the shards still reads every sample."""
    good = (folder / "ant" / "img.0.jpg").read_bytes()
    (folder / "ant" / "broken.jpg").write_bytes(good[: len(good) // 2])
    report = convert(str(folder), str(tmp_path / "o/s-%03d.tar"),
                     ConvertOptions(maxcount=1, drop_corrupt=True))  # fmt: skip
    counts = [s["count"] for s in read_index(report.index_path)["shards"]]
    assert len(report.skipped) == 1 and sorted(counts)[:2] == [0, 1] and sum(counts) == report.written
    names = sorted(os.listdir(tmp_path / "o"))
    assert names[:-1] == [f"s-{n:03d}.tar" for n in range(len(counts))]
    pattern = str(tmp_path / f"o/s-{{000..{len(counts) - 1:03d}}}.tar")
    assert len(list(iter_samples(pattern))) == report.written


def test_interrupted_conversion_resumes_to_identical_output(folder, tmp_path, monkeypatch):
    opts = ConvertOptions(maxcount=3, shuffle_seed=1, dedupe=True, drop_corrupt=True)
    clean = convert(str(folder), str(tmp_path / "clean/s-%03d.tar"), opts)
    real = prepare_mod.prepare_item
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 11:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr("fastdata.convert.local_engine.prepare_item", dying)
    with pytest.raises(KeyboardInterrupt):
        convert(str(folder), str(tmp_path / "cut/s-%03d.tar"), opts)
    assert sorted(os.listdir(tmp_path / "cut")) == ["s-000.tar", "s-001.tar", "s-002.tar", "s.index.json.parts"]
    assert sorted(os.listdir(tmp_path / "cut/s.index.json.parts")) == [f"{n:08d}.json" for n in range(3)] + [
        "plan.json"]
    monkeypatch.setattr("fastdata.convert.local_engine.prepare_item", real)
    resumed = convert(str(folder), str(tmp_path / "cut/s-%03d.tar"), opts)
    assert resumed.resumed_shards == 3
    assert [s["sha256"] for s in resumed.shards] == [s["sha256"] for s in clean.shards]
    assert (tmp_path / "clean/s.index.json").read_bytes() == (tmp_path / "cut/s.index.json").read_bytes()
    assert sorted(os.listdir(tmp_path / "cut")) == sorted(os.listdir(tmp_path / "clean"))
    with pytest.raises(Exception, match="other options"):
        monkeypatch.setattr("fastdata.convert.local_engine.prepare_item", dying)
        calls["n"] = 0
        with pytest.raises(KeyboardInterrupt):
            convert(str(folder), str(tmp_path / "cut2/s-%03d.tar"), opts)
        convert(str(folder), str(tmp_path / "cut2/s-%03d.tar"), ConvertOptions(maxcount=4))


def test_maxsize_cuts_shards_where_shard_writer_does(folder, tmp_path):
    report = convert(str(folder), str(tmp_path / "o/s-%04d.tar"), ConvertOptions(maxsize=6_000, shuffle_seed=4))
    assert len(report.shards) > 3
    reference = ImageFolder(str(folder))
    by_key = {os.path.splitext(os.path.relpath(p, folder))[0].replace(".", "_"): (p, c) for p, c in reference.samples}
    keys = [s["__key__"] for s in read_all(report.index_path)[1]]
    with ShardWriter(str(tmp_path / "ref/s-%04d.tar"), maxsize=6_000) as sink:
        for key in keys:
            path, label = by_key[key]
            ext = "jpg" if path.lower().endswith(("jpg", "jpeg")) else "png"
            sink.write({"__key__": key, ext: open(path, "rb").read(), "cls": label})
    assert report.shards == [s.to_dict() for s in sink.shards]


def test_http_folder_and_manifest_through_fsspec(folder, tmp_path, served):  # noqa: F811
    pytest.importorskip("aiohttp")
    rows = ["path,label"] + [f"photos/ant/img.{i}.{['jpg', 'png', 'JPEG'][i % 3]},{i % 2}" for i in range(7)]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    url = served[1]
    for src, workers in [("photos", 0), ("m.csv", 2)]:
        local = convert(str(tmp_path / src), str(tmp_path / f"local-{src}/s-%d.tar"), ConvertOptions(maxcount=5))
        remote = convert(f"{url}/{src}", str(tmp_path / f"http-{src}/s-%d.tar"),
                         ConvertOptions(maxcount=5, workers=workers))
        assert remote.shards == local.shards and remote.written == local.written > 0
        assert read_index(remote.index_path)["source"]["kind"] == read_index(local.index_path)["source"]["kind"]
    with pytest.raises(SourceError, match="nothing.csv: cannot read"):
        convert(f"{url}/nothing.csv", str(tmp_path / "x/s-%d.tar"))


def test_cli_convert_and_verify(folder, tmp_path, capsys):
    pattern = str(tmp_path / "cli/train-%06d.tar")
    assert main(["convert", str(folder), pattern, "--maxcount", "5", "-j", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "wrote 16 samples in 4 shards" in out and "train.index.json" in out
    assert main(["verify", str(tmp_path / "cli/train.index.json")]) == 0
    assert "OK: 16 samples checked" in capsys.readouterr().out
    assert main(["convert", str(tmp_path / "nothing"), pattern]) == 1
    assert "no such file" in capsys.readouterr().err
    assert json.loads((tmp_path / "cli/train.index.json").read_text())["num_samples"] == 16


def test_missing_ray_says_how_to_install(monkeypatch, tmp_path, folder):
    monkeypatch.setitem(sys.modules, "ray", None)  # what ``import ray`` meets when it is not installed
    with pytest.raises(FastdataError, match=r"pip install 'fastdata\[ray\]'"):
        convert(str(folder), str(tmp_path / "o/s-%d.tar"), ConvertOptions(engine="ray"))
@pytest.mark.parametrize("extra, needle", [
    (["--maxcount", "0"], "--maxcount"), (["--maxcount", "-5"], "--maxcount"),
    (["--maxsize", "0"], "--maxsize"), (["--maxsize", "-1"], "--maxsize"),
    (["--max-side", "0"], "--max-side"), (["--max-side", "-1"], "--max-side"),
    (["-j", "-1"], "-j/--workers"), (["--stats-samples", "-1"], "--stats-samples"),
    (["--labels", "labels.npy"], "--labels applies"),
])  # fmt: skip
def test_cli_convert_rejects_bad_options_in_one_line(folder, tmp_path, capsys, extra, needle):
    pattern = str(tmp_path / "out/train-%06d.tar")
    assert main(["convert", str(folder), pattern, "--no-progress", *extra]) == 1
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


@pytest.mark.parametrize("name", ["train.tar", "train-%d-%d.tar", "train-%s.tar", "train-%06d-%x.tar"])
def test_cli_convert_rejects_patterns_without_one_number_field(folder, tmp_path, capsys, name):
    assert main(["convert", str(folder), str(tmp_path / name), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "exactly one number field" in err and len(err.strip().splitlines()) == 1


def test_cli_convert_unwritable_output_folder(folder, tmp_path, capsys):
    if os.geteuid() == 0:
        target = "/proc/fastdata-out/train-%06d.tar"  # not writable even for root
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = str(locked / "train-%06d.tar")
    assert main(["convert", str(folder), target, "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "output folder" in err and len(err.strip().splitlines()) == 1


def test_cli_convert_names_the_unreadable_file(folder, tmp_path, capsys):
    (folder / "zebra" / "garbage.png").write_bytes(b"not a png at all")
    assert main(["convert", str(folder), str(tmp_path / "o/s-%d.tar"), "--no-progress", "-j", "0"]) == 1
    err = capsys.readouterr().err
    assert "garbage.png" in err and "BytesIO" not in err and " at 0x" not in err


def test_cli_convert_plural_forms(tmp_path, capsys):
    rng = np.random.default_rng(0)
    write_image(str(tmp_path / "one/a/x.png"), rng, fmt="PNG")
    assert main(["convert", str(tmp_path / "one"), str(tmp_path / "o/s-%d.tar"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "wrote 1 sample in 1 shard," in out
    assert main(["verify", str(tmp_path / "o/s.index.json")]) == 0
    assert "OK: 1 sample checked" in capsys.readouterr().out


@pytest.mark.parametrize("workers", ["0", "2"])
def test_ctrl_c_during_convert_stops_in_one_line_and_resumes(folder, tmp_path, capsys, monkeypatch, workers):
    real = prepare_mod.prepare_item
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr("fastdata.convert.local_engine.prepare_item", dying)
    args = ["convert", str(folder), str(tmp_path / "cut/s-%03d.tar"), "--maxcount", "3", "--no-progress",
            "-j", workers, "--stats-samples", "0"]  # fmt: skip
    assert main(args) == 130
    err = capsys.readouterr().err
    assert "re-run" in err or "again to resume" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not [f for f in os.listdir(tmp_path / "cut") if ".tmp" in f]
    monkeypatch.setattr("fastdata.convert.local_engine.prepare_item", real)
    assert main(args) == 0
    assert "resumed an interrupted conversion" in capsys.readouterr().out
    assert main(["verify", str(tmp_path / "cut/s.index.json")]) == 0


def test_dedupe_flags_a_duplicate_filed_under_another_class(folder, tmp_path):
    """The same file under two classes is a label conflict: the duplicate is still left
    out, and the report says which labels disagree (torchvision's ImageFolder is the
    reference for the labels)."""
    from fastdata.convert.command import format_report

    (folder / "zebra" / "stray.jpg").write_bytes((folder / "ant" / "img.0.jpg").read_bytes())
    (folder / "ant" / "copy.png").write_bytes((folder / "ant" / "img.1.png").read_bytes())
    labels = {os.path.relpath(p, folder): y for p, y in ImageFolder(str(folder)).samples}
    report = convert(str(folder), str(tmp_path / "s-%d.tar"), ConvertOptions(dedupe=True))
    by_key = {d["key"]: d for d in report.duplicates}
    assert set(by_key) == {"zebra/stray", "ant/img_1"}  # "copy" sorts before "img.1"
    stray, kept = labels[os.path.join("zebra", "stray.jpg")], labels[os.path.join("ant", "img.0.jpg")]
    assert by_key["zebra/stray"]["label_conflict"] == f"label {stray!r} here, {kept!r} kept"
    assert "label_conflict" not in by_key["ant/img_1"]
    text = format_report(report)
    assert f"stray.jpg = ant/img_0 (LABEL CONFLICT: label {stray!r} here, {kept!r} kept)" in text

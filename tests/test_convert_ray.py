"""fastdata convert --engine ray, against a real local Ray instance (one for the whole run)."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest
from test_convert import write_image

from fastdata import SourceError
from fastdata.cli import main
from fastdata.convert.command import ConvertOptions, convert
from fastdata.convert.prepare import PrepareOptions

ray = pytest.importorskip("ray")
ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ray_instance():
    """One local Ray instance (2 CPUs, no dashboard, no usage stats) for every test here."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    if started:
        ray.shutdown()


@pytest.fixture
def photos(tmp_path):
    """An image folder with a duplicate, a truncated JPEG and a non-image among good images."""
    rng = np.random.default_rng(7)
    root = tmp_path / "photos"
    for cls, n in [("cat", 9), ("dog", 8)]:
        for i in range(n):
            write_image(str(root / cls / f"{i:02d}.{'png' if i % 4 == 3 else 'jpg'}"), rng,
                        fmt="PNG" if i % 4 == 3 else "JPEG")
    (root / "dog" / "copy.jpg").write_bytes((root / "cat" / "01.jpg").read_bytes())
    good = (root / "cat" / "02.jpg").read_bytes()
    (root / "dog" / "broken.jpg").write_bytes(good[: len(good) // 2])
    return root


def files(folder) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def both(src, tmp_path, options: ConvertOptions, **kwargs) -> tuple[dict, dict]:
    """Converts with the local engine (2 worker processes) and with Ray; returns both folders' files."""
    local = convert(str(src), str(tmp_path / "local/s-%04d.tar"), replace(options, workers=2), **kwargs)
    on_ray = convert(str(src), str(tmp_path / "ray/s-%04d.tar"), replace(options, engine="ray"), **kwargs)
    assert local.written == on_ray.written and local.skipped == on_ray.skipped
    return files(tmp_path / "local"), files(tmp_path / "ray")


def test_ray_writes_the_bytes_of_the_local_engine_folder(ray_instance, photos, tmp_path):
    opts = ConvertOptions(maxcount=4, shuffle_seed=2, dedupe=True, drop_corrupt=True,
                          prepare=PrepareOptions(check_decode=True))
    local, on_ray = both(photos, tmp_path, opts)
    assert local == on_ray and len(local) == 6  # 5 shards and the index
    index = json.loads(local["s.index.json"])
    assert [os.path.basename(s["source"]) for s in index["skipped"]] == ["broken.jpg"]
    assert [sorted([d["key"], d["duplicate_of"]]) for d in index["duplicates"]] == [["cat/01", "dog/copy"]]


def test_ray_writes_the_bytes_of_the_local_engine_raw_manifest_and_arrays(ray_instance, photos, tmp_path):
    rows = ["path,label"] + [f"photos/cat/{i:02d}.jpg,{i % 3}" for i in (0, 1, 2, 4, 5)]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    local, on_ray = both(tmp_path / "m.csv", tmp_path / "manifest",
                         ConvertOptions(maxsize=8_000, prepare=PrepareOptions(raw=True, max_side=20)))
    assert local == on_ray and len(local) > 2
    rng = np.random.default_rng(8)
    np.savez(tmp_path / "a.npz", images=rng.integers(0, 256, (11, 6, 5, 3), dtype=np.uint8),
             labels=rng.integers(0, 3, 11))
    local, on_ray = both(tmp_path / "a.npz", tmp_path / "arrays", ConvertOptions(maxcount=3, shuffle_seed=0))
    assert local == on_ray and len(local) == 5


def test_ray_task_failing_on_a_corrupt_file_is_retried_then_reported(ray_instance, photos, tmp_path):
    opts = ConvertOptions(maxcount=4, engine="ray", retries=1, prepare=PrepareOptions(check_decode=True))
    with pytest.raises(SourceError, match=r"broken\.jpg: not a readable image.*failed 2 times"):
        convert(str(photos), str(tmp_path / "o/s-%04d.tar"), opts)
    assert not [n for n in os.listdir(tmp_path / "o") if ".tmp" in n]


def test_interrupted_ray_driver_resumes_to_identical_output(ray_instance, photos, tmp_path, monkeypatch):
    (photos / "dog" / "broken.jpg").unlink()
    opts = ConvertOptions(maxcount=2, shuffle_seed=5, dedupe=True, engine="ray")
    convert(str(photos), str(tmp_path / "clean/s-%04d.tar"), replace(opts, engine="local"))

    class Dying:  # the progress bar: the driver dies once the first task is done
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            raise KeyboardInterrupt

    monkeypatch.setattr("fastdata.convert.command.tqdm", Dying)
    with pytest.raises(KeyboardInterrupt):
        convert(str(photos), str(tmp_path / "cut/s-%04d.tar"), opts)
    monkeypatch.undo()
    assert not (tmp_path / "cut" / "s.index.json").exists()  # the merge did not run
    resumed = convert(str(photos), str(tmp_path / "cut/s-%04d.tar"), opts)
    assert resumed.resumed_shards >= 1
    assert files(tmp_path / "cut") == files(tmp_path / "clean")


def test_cli_engine_ray_against_the_running_instance(ray_instance, photos, tmp_path, capsys):
    (photos / "dog" / "broken.jpg").unlink()
    pattern = str(tmp_path / "cli/train-%06d.tar")
    assert main(["convert", str(photos), pattern, "--maxcount", "5", "--engine", "ray",
                 "--ray-address", ray_instance, "--no-progress"]) == 0
    assert "wrote 18 samples in 4 shards" in capsys.readouterr().out
    assert main(["verify", str(tmp_path / "cli/train.index.json")]) == 0


def test_bench_convert_smoke_with_ray(ray_instance):
    spec = importlib.util.spec_from_file_location("bench_convert", ROOT / "benchmarks" / "bench_convert.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--images", "20", "--repeats", "1", "--engine", "ray", "--maxcount", "5"])
    rows = [line for line in result.splitlines() if line.startswith(("| webdataset", "| fastdata"))]
    assert len(rows) == 3 and "--engine ray" in rows[1]


@pytest.mark.slow
def test_killed_driver_process_resumes_to_identical_output(ray_instance, tmp_path):
    rng = np.random.default_rng(9)
    for i in range(120):
        write_image(str(tmp_path / f"src/c{i % 3}/{i:03d}.png"), rng, size=(64, 64), fmt="PNG")
    args = [str(tmp_path / "src"), str(tmp_path / "cut/s-%04d.tar"), "--maxcount", "1", "--raw",
            "--engine", "ray", "--ray-address", ray_instance, "--no-progress"]
    driver = subprocess.Popen([sys.executable, "-m", "fastdata", "convert", *args])
    parts = tmp_path / "cut" / "s.index.json.parts"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(os.listdir(parts) if parts.exists() else []) < 10:
        time.sleep(0.05)
    driver.kill()
    driver.wait()
    assert not (tmp_path / "cut" / "s.index.json").exists()
    assert main(["convert", *args]) == 0
    assert main(["convert", *args[:1], str(tmp_path / "clean/s-%04d.tar"), *args[2:5], "--no-progress"]) == 0
    assert files(tmp_path / "cut") == files(tmp_path / "clean")


def test_ray_tokenizes_the_bytes_of_the_local_engine(ray_instance, tmp_path):
    """convert --tokenize on Ray: the token shards and index of the local engine, byte for byte."""
    from test_tokens_convert import documents, text_folder

    from fastdata.convert.tokenize import TokenizeOptions, convert_tokens

    text_folder(tmp_path / "src", documents(40, seed=2))
    outputs = {}
    for engine in ("local", "ray"):
        out = tmp_path / engine
        options = TokenizeOptions(tokenizer="bytes", tokens_per_shard=600, workers=2, shuffle_seed=1,
                                  engine=engine, ray_address=ray_instance if engine == "ray" else None)  # fmt: skip
        convert_tokens(str(tmp_path / "src"), str(out / "t-%06d.tar"), options)
        outputs[engine] = files(out)
    assert len(outputs["local"]) > 3
    local_index = json.loads(outputs["local"].pop("t.index.json"))
    ray_index = json.loads(outputs["ray"].pop("t.index.json"))
    assert outputs["ray"] == outputs["local"]
    assert ray_index["shards"] == local_index["shards"]

"""The ``dynams`` command line on real Fashion-MNIST, and its error messages (run in this
process through its ``main()``; one test runs the installed console script)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .cli_runner import dynams as run


def test_convert_and_info(fashion_mnist_dir, tmp_path):
    result = run("dataset", "convert", "--data-dir", str(fashion_mnist_dir),
                 "--out", str(tmp_path / "fm"), "--rows-per-shard", "20000")
    assert result.returncode == 0, result.stderr
    assert "60000 samples, 3 shards" in result.stdout
    assert "10000 samples, 1 shards" in result.stdout
    info = run("dataset", "info", str(tmp_path / "fm" / "train"), "--verify")
    assert info.returncode == 0, info.stderr
    assert "samples:        60000" in info.stdout and "every sample decoded" in info.stdout
    assert "rows [40000, 60000)" in info.stdout
    both = run("dataset", "info", str(tmp_path / "fm"))  # the directory convert wrote
    assert both.returncode == 0, both.stderr
    assert "holds 2 datasets" in both.stdout and "test" in both.stdout
    assert "60000 samples" in both.stdout and "10000 samples" in both.stdout


def test_convert_limit_takes_a_subset(fashion_mnist_dir, tmp_path):
    result = run("dataset", "convert", "--data-dir", str(fashion_mnist_dir),
                 "--out", str(tmp_path / "fm"), "--limit", "3000", "--rows-per-shard", "1000")
    assert result.returncode == 0, result.stderr
    assert "train: 3000 samples, 3 shards" in result.stdout
    assert "test: 10000 samples" in result.stdout  # the test split stays whole
    from dynams_service import read_manifest

    assert read_manifest(str(tmp_path / "fm" / "train")).fingerprint.num_classes == 10
    assert "argument --limit: must be >= 1, got 0" in run(
        "dataset", "convert", "--out", "x", "--limit", "0").stderr


def test_console_script_is_installed():
    exe = shutil.which("dynams", path=str(Path(sys.executable).parent))
    assert exe is not None
    result = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "dataset" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("dataset", "convert", "--data-dir", "/nonexistent", "--out", "x"), "not a directory"),
        (("dataset", "info", "/nonexistent"), "no dataset here"),
    ],
)
def test_errors_are_one_clear_line(args, message):
    result = run(*args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_bad_flag_value():
    result = run("dataset", "convert", "--out", "x", "--rows-per-shard", "0")
    assert result.returncode == 2 and "must be >= 1" in result.stderr


def test_image_folder_convert_and_verify_names_corrupt_rows(tmp_path, fashion_mnist_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from benchmarks.jpeg_data import jpeg_folder

    folder = jpeg_folder(60, size=32, channels=3, root=tmp_path / "cache")
    out = tmp_path / "ds"
    result = run("dataset", "convert", "--image-folder", str(folder), "--out", str(out),
                 "--size", "3,24,24", "--rows-per-shard", "25")
    assert result.returncode == 0, result.stderr
    assert "60 images, 10 classes, 3 shards, decoded [3, 24, 24]" in result.stdout
    info = run("dataset", "info", str(out), "--verify")
    assert info.returncode == 0, info.stderr
    assert "decoder:        image {'size': [3, 24, 24]}" in info.stdout
    assert "every sample decoded" in info.stdout and "ankle-boot" in info.stdout
    subset = run("dataset", "convert", "--image-folder", str(folder), "--out",
                 str(tmp_path / "subset"), "--size", "3,24,24", "--limit", "20")
    assert subset.returncode == 0, subset.stderr
    assert "20 images, 10 classes" in subset.stdout
    from dynams_service import ShardDataset

    assert sorted(set(ShardDataset(str(tmp_path / "subset")).labels.tolist())) == list(range(10))

    shard = out / "shard-00001.parquet"
    table = pq.read_table(shard)
    values = table.column("sample").to_pylist()
    values[3] = b"\xff\xd8\xff" + b"\x00" * 20  # a JPEG header and nothing else
    pq.write_table(table.set_column(2, "sample", pa.array(values, type=pa.binary())), shard)
    info = run("dataset", "info", str(out), "--verify")
    assert info.returncode == 2
    assert "shard-00001.parquet row 3 (dataset index 28)" in info.stderr
    assert "Traceback" not in info.stderr


def test_image_folder_convert_refuses_bad_size_and_corrupt_files(tmp_path, fashion_mnist_dir):
    import shutil as sh

    from benchmarks.jpeg_data import jpeg_folder

    folder = tmp_path / "folder"
    sh.copytree(jpeg_folder(60, size=32, channels=3, root=tmp_path / "cache"), folder)
    bad_size = run("dataset", "convert", "--image-folder", str(folder), "--out",
                   str(tmp_path / "x"), "--size", "4,32,32")
    assert bad_size.returncode == 2 and "C 1 or 3" in bad_size.stderr
    broken = sorted((folder / "bag").iterdir())[0]
    broken.write_bytes(b"GIF89a")
    result = run("dataset", "convert", "--image-folder", str(folder), "--out",
                 str(tmp_path / "out"))
    assert result.returncode == 2 and f"{broken}: not a decodable" in result.stderr
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out.partial-*"))


def test_serve_refuses_limits_that_would_starve_short_calls():
    result = run("serve", "--max-streams", "500", "--ray-address", "127.0.0.1:1")
    assert result.returncode == 2
    assert "--max-streams (500) must be below the server's 128 worker threads" in result.stderr
    result = run("serve", "--job-ttl", "-1")
    assert result.returncode == 2 and "must be >= 0" in result.stderr


def test_image_folder_skip_broken_lists_every_skipped_file(tmp_path, fashion_mnist_dir):
    import shutil as sh

    from benchmarks.jpeg_data import jpeg_folder
    from dynams_service import ShardDataset, read_manifest

    folder = tmp_path / "folder"
    sh.copytree(jpeg_folder(60, size=32, channels=3, root=tmp_path / "cache"), folder)
    broken = [sorted((folder / "bag").iterdir())[0], sorted((folder / "coat").iterdir())[2]]
    broken[0].write_bytes(b"GIF89a")
    broken[1].write_bytes(broken[1].read_bytes()[:60])  # a JPEG cut short
    out = tmp_path / "out"
    result = run("dataset", "convert", "--image-folder", str(folder), "--out", str(out),
                 "--rows-per-shard", "16", "--skip-broken")
    assert result.returncode == 0, result.stderr
    assert "58 images, 10 classes" in result.stdout
    names = sorted(str(p.relative_to(folder)) for p in broken)
    assert "skipped 2 images that do not decode" in result.stderr
    assert all(f"  {name}\n" in result.stderr for name in names)
    manifest = read_manifest(str(out))
    assert sorted(manifest.skipped) == names and manifest.num_samples == 58
    assert len(ShardDataset(str(out))) == 58
    idx = run("dataset", "convert", "--out", str(tmp_path / "idx"), "--skip-broken")
    assert idx.returncode == 2 and "--skip-broken applies to --image-folder only" in idx.stderr


def test_image_folder_with_an_empty_class_is_refused(tmp_path, fashion_mnist_dir):
    import shutil as sh

    from benchmarks.jpeg_data import jpeg_folder

    folder = tmp_path / "folder"
    sh.copytree(jpeg_folder(20, size=32, channels=1, root=tmp_path / "cache"), folder)
    (folder / "zebra").mkdir()
    result = run("dataset", "convert", "--image-folder", str(folder), "--out",
                 str(tmp_path / "out"))
    assert result.returncode == 2
    assert "class folders without images" in result.stderr and "zebra" in result.stderr
    assert not (tmp_path / "out").exists()

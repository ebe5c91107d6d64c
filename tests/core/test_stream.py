"""ShardStream (what scorers score), ShardDataset (what trainers train on), encoded shards,
image folders, the manifest format, and corrupt samples named by shard and row."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from dynams_service import (
    ShardDataset,
    build_architecture,
    read_manifest,
    score,
    write_image_folder,
)
from dynams_service.core.data.decoders import Normalizer
from dynams_service.core.data.shards import (
    CorruptSample,
    ShardError,
    decode_samples,
    read_shards,
    verify_dataset,
    write_shards_from_dataset,
)
from dynams_service.core.data.stream import ShardStream, verify_samples
from dynams_service.core.selection.scoring import score_batches


def stream_margins(stream: ShardStream, proxy) -> torch.Tensor:
    normalize = Normalizer(stream.manifest.mean, stream.manifest.std)
    return score_batches(proxy, ((normalize(b.samples), None) for b in stream), stream.num_rows)


def in_memory_margins(uri: str, proxy, shard_ids=None, batch_size: int = 256) -> torch.Tensor:
    """What a scorer computed before streaming: every row decoded up front."""
    manifest = read_manifest(uri)
    rows = read_shards(uri, shard_ids, manifest=manifest)
    return score(proxy, decode_samples(rows.samples, manifest), batch_size=batch_size)


@pytest.fixture(scope="module")
def grey_proxy():
    torch.manual_seed(0)
    return build_architecture("cnn64-grey").make_proxy(0.25)


@pytest.mark.parametrize("cache_bytes", [0, 333 * 64 * 64, 1 << 30])
def test_margins_equal_at_every_cache_budget(jpeg_grey_shards, grey_proxy, cache_bytes):
    uri, manifest = jpeg_grey_shards
    expected = in_memory_margins(uri, grey_proxy, [1, 2, 3], batch_size=100)
    stream = ShardStream(uri, manifest, [1, 2, 3], batch_size=100, cache_bytes=cache_bytes,
                         decode_threads=2, read_rows=64)
    assert stream.cache_rows == min(750, cache_bytes // (64 * 64))
    for _ in range(2):  # the first pass fills the cache, the second reads it
        assert torch.equal(stream_margins(stream, grey_proxy), expected)
    assert stream.cached_bytes == stream.cache_rows * 64 * 64
    assert stream.indices.tolist() == list(range(250, 1000))


def test_batches_have_exactly_batch_size_rows(jpeg_grey_shards):
    uri, manifest = jpeg_grey_shards
    stream = ShardStream(uri, manifest, batch_size=96, cache_bytes=130 * 64 * 64, read_rows=50)
    for _ in range(2):
        sizes = [len(b.indices) for b in stream]
        assert sizes == [96] * 10 + [40] and len(stream) == 11
    batch = next(iter(stream))
    assert batch.samples.shape == (96, 1, 64, 64) and batch.samples.dtype == torch.uint8
    assert batch.labels.tolist() == read_shards(uri, [0], manifest=manifest).labels[:96].tolist()


def test_raw_shards_stream_as_before(small_shards):
    uri, manifest = small_shards
    torch.manual_seed(0)
    proxy = build_architecture("fmnist-cnn").make_proxy(0.25)
    expected = in_memory_margins(uri, proxy, [2, 3])
    for cache in (0, 1 << 30):
        stream = ShardStream(uri, manifest, [2, 3], cache_bytes=cache)
        assert torch.equal(stream_margins(stream, proxy), expected)


def test_a_manifest_of_another_format_is_refused(tmp_path, small_shards):
    uri = tmp_path / "old"
    shutil.copytree(small_shards[0], uri)
    manifest = json.loads((uri / "dynams-dataset.json").read_text())
    manifest["format"] = "dynams-shards/1"
    (uri / "dynams-dataset.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match="format 'dynams-shards/1', this version reads "
                                         "'dynams-shards/2'"):
        read_manifest(str(uri))


def test_v2_manifest_names_its_decoder(jpeg_shards, small_shards):
    raw = json.loads(Path(small_shards[0], "dynams-dataset.json").read_text())
    assert raw["format"] == "dynams-shards/2" and raw["decoder"]["name"] == "raw"
    assert "sample_dtype" not in raw
    image = json.loads(Path(jpeg_shards[0], "dynams-dataset.json").read_text())
    assert image["decoder"] == {"name": "image", "size": [3, 32, 32]}
    assert image["class_names"][0] == "t-shirt"


def test_shard_dataset_is_what_scorers_see(jpeg_shards):
    uri, manifest = jpeg_shards
    dataset = ShardDataset(uri, cache_bytes=0)  # one row group at a time
    stream = ShardStream(uri, manifest, batch_size=600)
    normalize = Normalizer(manifest.mean, manifest.std)
    everything = normalize(next(iter(stream)).samples)
    order = [599, 0, 250, 17, 401, 200]
    items = dataset.__getitems__(order)
    assert torch.equal(torch.stack([x for x, _ in items]), everything[order])
    assert [y for _, y in items] == stream.labels[order].tolist()
    loader = torch.utils.data.DataLoader(dataset, batch_size=50, num_workers=1)
    first = next(iter(loader))
    assert torch.equal(first[0], everything[:50])
    with pytest.raises(IndexError):
        dataset[600]


def corrupt_row(uri: str, shard: str, row: int) -> None:
    """Truncate one stored JPEG in place (labels, and so the fingerprint, unchanged)."""
    path = Path(uri, shard)
    table = pq.read_table(path)
    values = table.column("sample").to_pylist()
    values[row] = values[row][:50]
    table = table.set_column(2, "sample", pa.array(values, type=pa.binary()))
    pq.write_table(table, path)


@pytest.fixture()
def corrupt_copy(jpeg_shards, tmp_path) -> str:
    uri = str(tmp_path / "corrupt")
    shutil.copytree(jpeg_shards[0], uri)
    corrupt_row(uri, "shard-00001.parquet", 7)
    return uri


def test_corrupt_sample_is_named_by_shard_and_row(corrupt_copy):
    verify_dataset(corrupt_copy)  # labels and layout are fine …
    with pytest.raises(CorruptSample, match=r"shard-00001\.parquet row 7 \(dataset index 207\)"):
        verify_samples(corrupt_copy)  # … but decoding finds the sample
    stream = ShardStream(corrupt_copy, batch_size=64, decode_threads=2, cache_bytes=1 << 30)
    with pytest.raises(CorruptSample, match=r"shard-00001\.parquet row 7"):
        list(stream)
    with pytest.raises(CorruptSample, match="dataset index 207"):
        ShardDataset(corrupt_copy)[207]


def test_image_folder_converts_in_imagefolder_order(tmp_path, fashion_mnist_dir):
    from benchmarks.jpeg_data import jpeg_folder

    folder = jpeg_folder(60, size=32, channels=3, root=tmp_path / "cache")
    manifest = write_image_folder(folder, str(tmp_path / "out"), rows_per_shard=25)
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    files = [(f, label) for label, c in enumerate(classes)
             for f in sorted((folder / c).iterdir())]
    assert manifest.class_names == tuple(classes) and manifest.sample_shape == (3, 32, 32)
    assert [len(range(s.start, s.stop)) for s in manifest.shards] == [25, 25, 10]
    rows = read_shards(str(tmp_path / "out"))
    assert rows.labels.tolist() == [label for _, label in files]
    assert [bytes(b) for b in rows.samples] == [f.read_bytes() for f, _ in files]  # kept encoded
    assert not list(tmp_path.glob("out.partial-*"))


def test_image_folder_refuses_a_corrupt_file_and_leaves_nothing(tmp_path, fashion_mnist_dir):
    from benchmarks.jpeg_data import jpeg_folder

    folder = tmp_path / "folder"
    shutil.copytree(jpeg_folder(60, size=32, channels=3, root=tmp_path / "cache"), folder)
    bad = sorted((folder / "coat").iterdir())[1]
    bad.write_bytes(bad.read_bytes()[:60])
    with pytest.raises(ShardError, match=f"{bad}: not a decodable"):
        write_image_folder(folder, str(tmp_path / "out"), rows_per_shard=25)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob("out.partial-*"))


def test_dataset_of_bytes_stays_encoded(jpeg_shards, tmp_path):
    uri, manifest = jpeg_shards
    rows = read_shards(uri, [0], manifest=manifest)

    class Encoded(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 50

        def __getitem__(self, i: int):
            return bytes(rows.samples[i]), int(rows.labels[i])

    written = write_shards_from_dataset(str(tmp_path / "enc"), Encoded(), num_classes=10,
                                        rows_per_shard=20)
    assert written.decoder == {"name": "image", "size": [3, 32, 32]}
    assert [bytes(b) for b in read_shards(str(tmp_path / "enc")).samples] == \
        [bytes(b) for b in rows.samples[:50]]


def test_existing_output_is_refused(jpeg_shards, tmp_path, fashion_mnist_dir):
    from benchmarks.jpeg_data import jpeg_folder

    folder = jpeg_folder(60, size=32, channels=3, root=tmp_path / "cache")
    (tmp_path / "out").mkdir()
    with pytest.raises(ShardError, match="already exists"):
        write_image_folder(folder, str(tmp_path / "out"))


def test_unknown_decoder_is_named(tmp_path, small_shards):
    shutil.copytree(small_shards[0], tmp_path / "ds")
    path = tmp_path / "ds" / "dynams-dataset.json"
    manifest = json.loads(path.read_text())
    manifest["decoder"]["name"] = "nope"
    path.write_text(json.dumps(manifest))
    with pytest.raises(KeyError, match="unknown decoder 'nope'"):
        ShardStream(str(tmp_path / "ds"))
    assert read_manifest(str(tmp_path / "ds")).decoder["name"] == "nope"


def test_shard_dataset_cache_is_a_byte_budget(jpeg_shards):
    """The default budget keeps every row group of a small dataset, so a shuffled pass
    reads each once; a budget of one group's bytes keeps one; a negative budget is refused."""
    uri, _ = jpeg_shards
    order = torch.randperm(600, generator=torch.Generator().manual_seed(0)).tolist()
    roomy = ShardDataset(uri)
    roomy.__getitems__(order)
    groups = len(roomy._groups)
    assert groups > 1 and roomy._cached_bytes == sum(c.nbytes for c in roomy._groups.values())
    tight = ShardDataset(uri, cache_bytes=min(c.nbytes for c in roomy._groups.values()))
    a, b = tight.__getitems__(order), roomy.__getitems__(order)
    assert torch.equal(torch.stack([x for x, _ in a]), torch.stack([x for x, _ in b]))
    assert len(tight._groups) == 1
    with pytest.raises(ValueError, match="cache_bytes"):
        ShardDataset(uri, cache_bytes=-1)

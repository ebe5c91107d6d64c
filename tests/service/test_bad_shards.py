"""Malformed shards are refused at CreateJob with the file named; pushes carrying a pickle
payload or a path-like tensor name are refused, and nothing is committed."""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dynams_service import JobSpec, ProxySpec, ScorerResources, SelectionPolicy, write_shards
from dynams_service.client import SelectorClient, SelectorError, Status
from dynams_service.core.job import RoundState
from dynams_service.core.models.proxy import TensorRecord, export_psp
from tests.conftest import local_server

from .conftest import make_spec

ROWS = 300
BAD = "shard-00001.parquet"  # the middle one of three shards of 100 rows
MARKER = Path(tempfile.gettempdir()) / f"dynams-bad-shards-unpickled-{os.getpid()}"


class _TouchOnUnpickle:
    """Whoever unpickles this creates MARKER: bytes the selector must never load."""

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(MARKER), "w"))


PICKLE = pickle.dumps({"fc.weight": _TouchOnUnpickle()})


def _rewrite(path: Path, change: Callable[[pa.Table], pa.Table]) -> None:
    """Rewrite a shard with its table changed."""
    pq.write_table(change(pq.read_table(path)), path)


def _with_column(name: str, values: Any) -> Callable[[pa.Table], pa.Table]:
    """A table change that replaces one column."""
    return lambda t: t.set_column(t.schema.get_field_index(name), name, pa.array(values))


def _edited(name: str, edit: Callable[[np.ndarray], None]) -> Callable[[Path], None]:
    """A breaker that edits a copy of an int column in place and writes it back."""

    def breaker(path: Path) -> None:
        values = pq.read_table(path).column(name).to_numpy().copy()
        edit(values)
        _rewrite(path, _with_column(name, values))

    return breaker


def _set(at: slice | int, value: Any) -> Callable[[np.ndarray], None]:
    """An edit that assigns ``value`` at ``at``."""

    def edit(values: np.ndarray) -> None:
        values[at] = value

    return edit


def _shift(values: np.ndarray) -> None:
    """Leave a gap in the index: rows 50.. move up by one."""
    values[50:] += 1


BREAKERS: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated to its first 200 bytes": (
        lambda p: p.write_bytes(p.read_bytes()[:200]), "unreadable shard"),
    "footer cut off": (lambda p: p.write_bytes(p.read_bytes()[:-64]), "unreadable shard"),
    "empty file": (lambda p: p.write_bytes(b""), "unreadable shard"),
    "a pickle instead of Parquet": (lambda p: p.write_bytes(PICKLE), "unreadable shard"),
    "file missing": (lambda p: p.unlink(), "unreadable shard"),
    "columns renamed": (lambda p: _rewrite(p, lambda t: t.rename_columns(
        ["idx", "label", "sample"])), "missing columns ['index']"),
    "label column dropped": (lambda p: _rewrite(p, lambda t: t.drop_columns(["label"])),
                             "missing columns ['label']"),
    "labels as strings": (lambda p: _rewrite(p, lambda t: _with_column(
        "label", [str(v) for v in t.column("label").to_pylist()])(t)),
        "column 'label' must be integer"),
    "samples of variable size": (lambda p: _rewrite(p, lambda t: _with_column(
        "sample", [b"x"] * t.num_rows)(t)), "fixed_size_binary"),
    "a label of 10 with 10 classes": (_edited("label", _set(5, 10)), "labels in"),
    "a negative label": (_edited("label", _set(7, -1)), "labels in"),
    "an index gap": (_edited("index", _shift), "not the contiguous range"),
    "a repeated index": (_edited("index", _set(9, 108)), "not the contiguous range"),
    "rows missing": (lambda p: _rewrite(p, lambda t: t.slice(0, 90)), "manifest says 100"),
}


@pytest.mark.parametrize("breakage", list(BREAKERS))
def test_malformed_shards_are_refused_naming_the_file(server_factory, tmp_path: Path,
                                                      fashion_mnist_train, breakage: str
                                                      ) -> None:
    """CreateJob on a dataset with one broken shard: FAILED_PRECONDITION naming that shard."""
    images, labels = fashion_mnist_train
    uri = str(tmp_path / "dataset")
    manifest = write_shards(uri, images[:ROWS, None], labels[:ROWS], num_classes=10,
                            rows_per_shard=100)
    assert [s.path for s in manifest.shards][1] == BAD
    breaker, message = BREAKERS[breakage]
    breaker(Path(uri) / BAD)
    spec = JobSpec(job_id="broken", dataset_uri=uri, fingerprint=manifest.fingerprint,
                   proxy=ProxySpec(architecture="fmnist-cnn", width=0.25),
                   policy=SelectionPolicy(ratio=0.3), epochs=4,
                   resources=ScorerResources(num_scorers=1, num_cpus=1, batch_size=256))
    state_dir = tmp_path / "state"
    server = server_factory(state_dir=state_dir)
    with SelectorClient(server.address, retries=0, timeout=60) as client:
        with pytest.raises(SelectorError) as info:
            client.create_job(spec)
        error = info.value
        assert error.status == Status.FAILED_PRECONDITION, error
        assert str(Path(uri) / BAD) in error.details and message in error.details, error
        assert client.list_jobs() == []
        with pytest.raises(SelectorError) as info:
            client.get_job(spec.job_id)
        assert info.value.status == Status.NOT_FOUND
    assert not (state_dir / "jobs" / spec.job_id).exists()
    assert not MARKER.exists(), "the selector unpickled a shard"


@dataclass
class Waiting:
    """A live job whose round 0 (epoch 1) has no weights yet, and its good PSP tensors."""

    client: SelectorClient
    job_id: str
    state_dir: Path
    good: list[TensorRecord]
    files: list[str]


@pytest.fixture(scope="module")
def waiting(small_shards, trained_model, tmp_path_factory) -> Iterator[Waiting]:
    """A server with one job created (in-process scorers up) and no weights pushed."""
    state_dir = tmp_path_factory.mktemp("push-state")
    server = local_server(state_dir)
    client = SelectorClient(server.address, retries=0, timeout=60)
    try:
        spec = make_spec(small_shards, job_id="waiting")
        client.create_job(spec)
        files = sorted(str(p.relative_to(state_dir)) for p in state_dir.rglob("*"))
        yield Waiting(client, spec.job_id, state_dir, export_psp(trained_model, 0.25), files)
    finally:
        client.close()
        server.stop(grace=0)


def _assert_nothing_committed(waiting: Waiting) -> None:
    """Round 0 still waits for weights, its selection is refused, no file was written."""
    job = waiting.client.get_job(waiting.job_id)
    assert [r.state for r in job.rounds] == [RoundState.WAITING] * 3
    with pytest.raises(SelectorError) as info:
        waiting.client.get_selection(waiting.job_id, 1, 0, 1, timeout=1)
    assert info.value.status == Status.FAILED_PRECONDITION
    assert "no weights pushed for round 0 (epoch 1)" in info.value.details
    files = sorted(str(p.relative_to(waiting.state_dir)) for p in waiting.state_dir.rglob("*"))
    assert files == waiting.files
    assert not MARKER.exists(), "the selector unpickled a pushed tensor"


def _refused(waiting: Waiting, records: list[TensorRecord]) -> SelectorError:
    """Push ``records`` for epoch 1 and return the error it must raise."""
    with pytest.raises(SelectorError) as info:
        waiting.client.push_weights(waiting.job_id, epoch=1, version=3, records=records)
    return info.value


@pytest.mark.parametrize(("name", "dtype", "message"), [
    ("fc.weight", "float32", "bytes do not hold shape [32, 784]"),
    ("fc.weight", "object", "dtype object"),
    ("state_dict", "float32", "'state_dict' is not part of the proxy"),
])
def test_a_pickle_payload_as_tensor_data_is_refused(waiting: Waiting, name: str, dtype: str,
                                                    message: str) -> None:
    """A pickle where raw tensor bytes belong: INVALID_ARGUMENT, never unpickled, not committed."""
    records = [r for r in waiting.good if r.name != name]
    shape = next((r.shape for r in waiting.good if r.name == name), (len(PICKLE),))
    error = _refused(waiting, [*records, TensorRecord(name, dtype, shape, PICKLE)])
    assert error.status == Status.INVALID_ARGUMENT and message in error.details, error
    _assert_nothing_committed(waiting)


@pytest.mark.parametrize("name", ["../../x", "../../../../tmp/dynams-pushed-tensor",
                                  "/tmp/dynams-pushed-tensor", "..", "fc.weight/../../x",
                                  "jobs/waiting/round-00000.arrow", "fc\\weight", "fc.weight\0"])
@pytest.mark.parametrize("how", ["extra", "renamed"])
def test_a_tensor_named_like_a_path_is_refused(waiting: Waiting, name: str, how: str) -> None:
    """A path-like tensor name, extra or replacing a real one: INVALID_ARGUMENT, no file."""
    fc = next(r for r in waiting.good if r.name == "fc.weight")
    others = waiting.good if how == "extra" else [r for r in waiting.good if r is not fc]
    bases = (waiting.state_dir, waiting.state_dir / "jobs" / waiting.job_id, Path.cwd())
    targets = {(base / name.replace("\0", "")).resolve() for base in bases}
    existed = {target for target in targets if target.exists()}
    error = _refused(waiting, [*others, TensorRecord(name, fc.dtype, fc.shape, fc.data)])
    assert error.status == Status.INVALID_ARGUMENT, error
    assert "is not a dotted module path" in error.details, error
    _assert_nothing_committed(waiting)
    assert {target for target in targets if target.exists()} == existed  # nothing written


def test_after_the_refused_pushes_good_weights_are_committed(waiting: Waiting) -> None:
    """The refused pushes left no trace: the good push starts round 0 and it is served."""
    ack = waiting.client.push_weights(waiting.job_id, epoch=1, version=4, records=waiting.good)
    assert ack.round == 0 and not ack.already_done
    header = waiting.client.get_selection(waiting.job_id, 1, 0, 1, timeout=120)
    indices = header.indices
    assert header.weights_version == 4 and len(indices) == header.global_count == 1200

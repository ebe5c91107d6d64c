"""PSP records: raw tensors round-trip exactly; every malformed push is refused by name."""

from __future__ import annotations

import pickle

import pytest
import torch

from dynams_service import SlimCNN
from dynams_service.core.models.proxy import (
    PSPError,
    TensorRecord,
    build_proxy,
    export_psp,
    proxy_schema,
)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int64])
def test_record_round_trip_is_exact(dtype):
    tensor = (torch.randn(3, 4) * 100).to(dtype)
    record = TensorRecord.from_tensor("layer.weight", tensor)
    assert record.nbytes == tensor.numel() * tensor.element_size()
    back = record.to_tensor()
    assert back.dtype == dtype and torch.equal(back, tensor)


def test_records_are_little_endian_bytes():
    record = TensorRecord.from_tensor("x", torch.tensor([1], dtype=torch.int64))
    assert record.data == (1).to_bytes(8, "little")


def test_spec_matches_export():
    records = export_psp(SlimCNN(), 0.25)
    spec = proxy_schema("fmnist-cnn", 0.25)
    assert {r.name: (r.dtype, r.shape) for r in records} == spec


def test_half_precision_push_is_widened():
    model = SlimCNN().eval()
    records = [TensorRecord.from_tensor(r.name, r.to_tensor().half())
               if r.dtype == "float32" else r for r in export_psp(model, 0.5)]
    proxy = build_proxy("fmnist-cnn", 0.5, records)
    assert proxy.conv1.weight.dtype == torch.float32


def _replace(records, name, record):
    return [record if r.name == name else r for r in records]


def _bad_pushes():
    good = export_psp(SlimCNN(), 0.25)
    w = next(r for r in good if r.name == "conv1.weight")
    nan = torch.full(w.shape, float("nan"))
    pickled = pickle.dumps({"evil": 1})
    rec = TensorRecord.from_tensor

    def swap(record):
        return _replace(good, w.name, record)

    return {
        "wrong shape": (swap(rec(w.name, torch.zeros(9, 1, 3, 3))), "shape"),
        "wrong dtype": (swap(rec(w.name, torch.zeros(w.shape, dtype=torch.int64))), "dtype"),
        "unknown dtype": (swap(TensorRecord(w.name, "object", w.shape, w.data)), "dtype"),
        "truncated bytes": (swap(TensorRecord(w.name, w.dtype, w.shape, w.data[:-4])), "bytes"),
        "pickle payload": (swap(TensorRecord(w.name, w.dtype, w.shape, pickled)), "bytes"),
        "nan": (swap(rec(w.name, nan)), "NaN"),
        "duplicate": (good + [w], "twice"),
        "missing": (good[1:], "missing"),
        "unknown name": (good + [rec("extra.weight", torch.zeros(1))], "not part"),
        "path-like name": (good + [rec("../../etc/passwd", torch.zeros(1))], "dotted module path"),
        "negative dim": (swap(TensorRecord(w.name, w.dtype, (-8, 1, 3, 3), w.data)), "shape"),
    }


@pytest.mark.parametrize("case", sorted(_bad_pushes()))
def test_malformed_push_is_refused(case):
    records, message = _bad_pushes()[case]
    with pytest.raises(PSPError, match=message):
        build_proxy("fmnist-cnn", 0.25, records)


def test_huge_dims_do_not_allocate():
    record = TensorRecord("w", "float32", (2**40, 2**40), b"\x00" * 16)
    with pytest.raises(PSPError, match="bytes do not hold"):
        record.to_tensor()

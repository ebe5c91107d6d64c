"""Decoders: raw tensors, encoded images (grey/RGB, resize + centre crop), the registry."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from dynams_service.core.data.decoders import (
    DecodeError,
    Decoder,
    ImageDecoder,
    Normalizer,
    RawDecoder,
    build_decoder,
    decoders,
    register_decoder,
    resize_center_crop,
)
from dynams_service.core.registry import UnknownName


def encode(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def test_raw_roundtrip_is_exact():
    x = np.random.default_rng(0).integers(0, 256, size=(5, 1, 4, 4), dtype=np.uint8)
    column = pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), 5, [None, pa.py_buffer(x)])
    decoder = RawDecoder([1, 4, 4])
    assert torch.equal(decoder.decode(column), torch.from_numpy(x))
    assert torch.equal(decoder.decode(column.slice(2, 2)), torch.from_numpy(x[2:4]))
    assert decoder.row_bytes == 16 and decoder.accepts(pa.binary(16))
    assert not decoder.accepts(pa.binary())


@pytest.mark.parametrize(("channels", "fmt"), [(1, "PNG"), (3, "PNG"), (3, "JPEG")])
def test_image_same_size_decodes_pixels(channels, fmt):
    ramp = np.add.outer(np.arange(8), np.arange(8)).astype(np.uint8) * 16  # smooth: JPEG-friendly
    pixels = ramp if channels == 1 else np.stack([ramp, ramp // 2, 255 - ramp], axis=-1)
    out = ImageDecoder([channels, 8, 8]).decode(pa.array([encode(pixels, fmt)]))
    assert out.shape == (1, channels, 8, 8) and out.dtype == torch.uint8
    expected = torch.from_numpy(pixels).reshape(8, 8, channels).permute(2, 0, 1)
    if fmt == "PNG":  # lossless
        assert torch.equal(out[0], expected)
    else:
        assert (out[0].float() - expected.float()).abs().mean() < 8


def test_image_converts_grey_and_rgb_both_ways():
    grey = encode(np.full((6, 6), 200, np.uint8))
    rgb = encode(np.full((6, 6, 3), (10, 20, 30), np.uint8))
    assert ImageDecoder([3, 6, 6]).decode(pa.array([grey]))[0, :, 0, 0].tolist() == [200] * 3
    assert ImageDecoder([1, 6, 6]).decode(pa.array([rgb])).shape == (1, 1, 6, 6)


def test_resize_covers_then_crops_the_centre():
    x = torch.zeros(1, 20, 40, dtype=torch.uint8)
    x[:, :, 10:30] = 255  # the centre half of a wide image
    out = resize_center_crop(x, 10, 10)  # scale 0.5 → 10×20, crop columns 5…15
    assert out.shape == (1, 10, 10)
    assert out.float().mean() > 240  # only the bright centre is left (edges blend a little)
    assert torch.equal(resize_center_crop(x, 20, 40), x)
    assert resize_center_crop(torch.zeros(3, 7, 5, dtype=torch.uint8), 16, 16).shape == (3, 16, 16)


@pytest.mark.parametrize("bad", [b"", b"not an image", encode(np.zeros((4, 4), np.uint8),
                                                              "JPEG")[:40]])
def test_corrupt_image_names_its_row(bad):
    good = encode(np.zeros((4, 4), np.uint8))
    with pytest.raises(DecodeError) as info:
        ImageDecoder([1, 4, 4]).decode(pa.array([good, good, bad]))
    assert info.value.row == 2 and "row 2" in str(info.value)


def test_image_decoder_refuses_formats_it_was_not_given():
    gif = io.BytesIO()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(gif, format="GIF")
    with pytest.raises(DecodeError):
        ImageDecoder([1, 4, 4]).decode(pa.array([gif.getvalue()]))


def test_normalizer_matches_the_manifest_formula():
    x = torch.arange(0, 256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    out = Normalizer([0.5], [0.25])(x)
    assert torch.allclose(out, (x.float() / 255.0 - 0.5) / 0.25)
    assert out.dtype == torch.float32


def test_registry_builds_by_name_and_refuses_unknown_names():
    assert {"raw", "image"} <= set(decoders())
    assert isinstance(build_decoder({"name": "image", "size": [3, 8, 8]}), ImageDecoder)
    with pytest.raises(UnknownName, match="unknown decoder 'nope'.*registered"):
        build_decoder({"name": "nope"})
    with pytest.raises(ValueError, match="bad parameters"):
        build_decoder({"name": "image", "size": [3, 8, 8], "colour": "red"})
    with pytest.raises(ValueError, match="C 1 or 3"):
        build_decoder({"name": "image", "size": [4, 8, 8]})
    with pytest.raises(ValueError, match="already registered"):
        register_decoder("raw", RawDecoder)


def test_operator_decoder_registers_and_builds():
    class Inverted(RawDecoder):
        def decode(self, column: pa.Array) -> torch.Tensor:
            return 255 - super().decode(column)

    register_decoder("test-inverted", Inverted, replace=True)
    decoder = build_decoder({"name": "test-inverted", "shape": [1, 2, 2]})
    assert isinstance(decoder, Decoder)
    column = pa.array([bytes([0, 1, 2, 3])], type=pa.binary(4))
    assert decoder.decode(column).flatten().tolist() == [255, 254, 253, 252]


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP"])
@pytest.mark.parametrize("channels", [1, 3])
def test_header_gives_format_and_size(fmt, channels):
    from dynams_service.core.data.image_headers import image_format, image_size

    shape = (13, 21) if channels == 1 else (13, 21, 3)
    data = encode(np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8), fmt)
    assert image_format(data) == fmt
    assert image_size(data, fmt) == (21, 13)
    out = ImageDecoder([channels, 13, 21]).decode(pa.array([data]))
    assert out.shape == (1, channels, 13, 21)


def _with_size(data: bytes, fmt: str, width: int, height: int) -> bytes:
    """The image's header rewritten to claim ``width`` x ``height`` pixels."""
    import struct

    if fmt == "PNG":
        return data[:16] + struct.pack(">II", width, height) + data[24:]
    sof = data.index(b"\xff\xc0")
    return data[:sof + 5] + struct.pack(">HH", height, width) + data[sof + 9:]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_decompression_bomb_is_refused_before_decoding(fmt):
    data = _with_size(encode(np.zeros((8, 8), np.uint8), fmt), fmt, 60000, 60000)
    with pytest.raises(DecodeError, match="60000x60000 image exceeds the limit"):
        ImageDecoder([1, 8, 8]).decode(pa.array([data]))


def test_format_outside_the_allowed_ones_is_refused():
    png = encode(np.zeros((4, 4), np.uint8), "PNG")
    with pytest.raises(DecodeError, match="not a decodable JPEG image"):
        ImageDecoder([1, 4, 4], formats=["JPEG"]).decode(pa.array([png]))


def test_sixteen_bit_png_decodes_to_uint8():
    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1024)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, format="PNG")
    out = ImageDecoder([1, 8, 8]).decode(pa.array([buf.getvalue()]))
    assert out.dtype == torch.uint8
    assert torch.equal(out[0, 0], torch.from_numpy((ramp >> 8).astype(np.uint8)))

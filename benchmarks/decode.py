"""Image decoding: the ``image`` decoder (torchvision.io + transforms.v2) against Pillow
doing the same work (open, convert, antialiased resize to cover, centre crop), images/s on
one core, median of repeats, in one run.

Images are real Fashion-MNIST items up-scaled, shifted and JPEG-encoded
(``jpeg_data.jpeg_items``), at sizes from the 28-pixel originals to 256 pixels, decoded to
the sizes a scorer would use. Pillow is kept only for what torchvision does not read (BMP).

Run: ``.venv/bin/python benchmarks/decode.py [--images 300] [--repeats 7] [--out DIR]``
(prints one JSON object; ``DIR/decode.json``).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from jpeg_data import jpeg_items
from results_io import store_json

from dynams_service.core.data.decoders import ImageDecoder

# (stored side, channels, decoded (C, H, W))
CASES = [(32, 3, (3, 32, 32)), (64, 3, (3, 64, 64)), (64, 1, (1, 64, 64)),
         (128, 3, (3, 64, 64)), (256, 3, (3, 224, 224))]


def pillow_decode(data: bytes, shape: tuple[int, int, int]) -> torch.Tensor:
    """Pillow's version of the decoder: convert, resize to cover (antialiased bilinear),
    centre crop, to a uint8 (C, H, W) tensor."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("L" if shape[0] == 1 else "RGB")
        w, h = img.size
        height, width = shape[1:]
        scale = max(height / h, width / w)
        new_w, new_h = max(width, round(w * scale)), max(height, round(h * scale))
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), Image.BILINEAR)
        left, top = round((new_w - width) / 2), round((new_h - height) / 2)
        pixels = np.asarray(img.crop((left, top, left + width, top + height))).copy()
    x = torch.from_numpy(pixels)
    return x[None] if x.dim() == 2 else x.permute(2, 0, 1)


def rate(fn, items: list[bytes], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for data in items:
            fn(data)
        times.append(time.perf_counter() - started)
    return len(items) / statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for side, channels, shape in CASES:
        items = [data for data, _ in jpeg_items(args.images, size=side, channels=channels)]
        decoder = ImageDecoder(shape)
        decoder.decode_one(items[0])  # warm-up: imports
        ours = rate(decoder.decode_one, items, args.repeats)
        pillow = rate(lambda data, s=shape: pillow_decode(data, s), items, args.repeats)
        rows.append({"stored": f"{channels}x{side}x{side} JPEG", "decoded": list(shape),
                     "decoder_images_per_s": round(ours), "pillow_images_per_s": round(pillow),
                     "decoder_vs_pillow": round(ours / pillow, 2)})
    result = {"images": args.images, "repeats": args.repeats, "threads": 1,
              "torch": torch.__version__, "cases": rows}
    print(json.dumps(result, indent=1))
    store_json(args.out, "decode.json", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

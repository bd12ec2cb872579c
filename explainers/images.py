"""Reading user images safely: every failure becomes an ``ImageError`` that says what to do."""
from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

MAX_PIXELS = 40_000_000  # 40 megapixels: larger photos are refused before they are decoded
MAX_BYTES = 50 * 1024 * 1024


class ImageError(ValueError):
    """An uploaded file that cannot be used as an image; the message is meant for the user."""


def load_image(source: bytes | str | Path, name: str = "the file") -> Image.Image:
    """Open an image from bytes or a path, refusing non-images and oversized images with a clear message.

    Only the header is read before the size check, so a 20000x20000 image costs nothing.
    Any mode (greyscale, palette, RGBA, 16-bit) is accepted; models convert it themselves.
    """
    data = Path(source).read_bytes() if isinstance(source, (str, Path)) else bytes(source)
    if not data:
        raise ImageError(f"{name} is empty.")
    if len(data) > MAX_BYTES:
        raise ImageError(f"{name} is {len(data) / 2**20:.0f} MB; the limit is {MAX_BYTES // 2**20} MB.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageError(
                    f"{name} is {width}x{height} pixels ({width * height / 1e6:.0f} MP); the limit is "
                    f"{MAX_PIXELS / 1e6:.0f} MP. Downscale it first: the model only sees a few hundred pixels a side."
                )
            image.load()
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
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        image = _to_8bit(image)
    return image


def _to_8bit(image: Image.Image) -> Image.Image:
    import numpy as np

    values = np.asarray(image, dtype=np.float64)
    low, high = values.min(), values.max()
    scaled = (values - low) / (high - low) * 255 if high > low else np.zeros_like(values)
    return Image.fromarray(scaled.astype(np.uint8), mode="L")

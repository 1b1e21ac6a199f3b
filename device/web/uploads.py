"""Checking and decoding an uploaded photo: anything that is not a sane JPEG/PNG/WebP becomes a 4xx."""
from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps
from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge, UnsupportedMediaType

FORMATS = ("JPEG", "PNG", "WEBP")
# A 24 MP camera's photo at most. PNG and WebP decode at full size (~100 MB at this limit, RGBA);
# JPEGs decode at 1/2, 1/4 or 1/8 scale straight from the file (draft mode), so they stay small.
MAX_PIXELS = 24_000_000
# The long side kept: the captioner sees 224x224 and a kept upload is stored like a camera frame.
MAX_SIDE = 2048


def decode_upload(file: FileStorage | None, max_bytes: int) -> Image.Image:
    """The uploaded `image` field as an RGB PIL image, upright (EXIF orientation applied).

    At most MAX_SIDE pixels on the long side. Raises BadRequest (no file / empty / damaged),
    UnsupportedMediaType (not JPEG/PNG/WebP) or RequestEntityTooLarge (bytes or pixels), each with a
    message a user can act on. Callers decode one upload at a time (AppState.caption_lock).
    """
    if file is None:
        raise BadRequest(description="send the photo as a multipart form field named 'image'")
    data = file.stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise RequestEntityTooLarge()
    if not data:
        raise BadRequest(description="the uploaded file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=FORMATS)
            w, h = img.size
            if w < 1 or h < 1:
                raise BadRequest(description="the image has no pixels")
            if w * h > MAX_PIXELS:
                raise RequestEntityTooLarge(
                    description=f"the image is too large ({w}x{h} pixels; at most {MAX_PIXELS // 10**6} MP)")
            if img.format == "JPEG":
                # libjpeg decodes at 1/2, 1/4 or 1/8 scale directly: the largest reduction that keeps
                # both sides >= MAX_SIDE / 2 (a 24 MP photo: 18 MB instead of 72 MB of pixels).
                img.draft("RGB", (MAX_SIDE // 2, MAX_SIDE // 2))
            img.load()  # decode now: damage shows up here
            if img.mode != "RGB":
                img = img.convert("RGB")
            img.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
            ImageOps.exif_transpose(img, in_place=True)  # upright, on the small copy
    except Image.UnidentifiedImageError:
        raise UnsupportedMediaType(description="not a JPEG, PNG or WebP image") from None
    except (BadRequest, RequestEntityTooLarge, UnsupportedMediaType):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise RequestEntityTooLarge(description="the image has too many pixels") from None
    except MemoryError:
        raise RequestEntityTooLarge(description="the image is too large to decode") from None
    except Exception:  # noqa: BLE001 - Pillow raises many types on crafted input (OSError, SyntaxError, struct.error...)
        raise BadRequest(description="the image file is damaged or truncated") from None
    return img

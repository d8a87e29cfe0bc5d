"""Safe image decoding and THE preprocessing definition.

numpy + Pillow only (no torch), so that training evaluation, export verification and predict all run the exact
same code path, and a deployment machine needs no torch.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

from vitdeploy.config import PreprocessSpec
from vitdeploy.errors import VitDeployError

# Formats we decode. Everything else (EPS runs Ghostscript, for one) is refused before Pillow parses it.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# Fully transparent pixels and the transparent parts of RGBA/LA/P images are composited onto this colour.
BACKGROUND_RGB = (255, 255, 255)
# A truncated file must be an error, never a grey-filled prediction (Pillow's default is already False;
# we pin it because other libraries in the same process sometimes flip it globally).
ImageFile.LOAD_TRUNCATED_IMAGES = False

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


class ImageDecodeError(VitDeployError):
    """One input image could not be decoded safely; `kind` is a short machine-readable reason."""

    def __init__(self, path: str | os.PathLike[str], kind: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = str(path)
        self.kind = kind
        self.detail = message


def decode_image(path: str | os.PathLike[str], draft_size: int | None = None) -> Image.Image:
    """Open an image file and return a fully loaded RGB image, or raise ImageDecodeError.

    - only ALLOWED_FORMATS are decoded; the first frame of animated GIF/WebP/multi-page TIFF is used;
    - EXIF orientation is applied, so the pixels are what a person sees;
    - every mode becomes RGB deliberately (see to_rgb);
    - decompression bombs and truncated files raise instead of producing a prediction.
    `draft_size`: for JPEG, let the decoder downscale by a power of two while both sides stay >= draft_size.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageDecodeError(path, "empty", "file is empty")
        with warnings.catch_warnings():
            # Pillow warns (DecompressionBombWarning) between 1x and 2x MAX_IMAGE_PIXELS: treat as an error too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=ALLOWED_FORMATS) as img:
                if draft_size and img.format == "JPEG":
                    img.draft("RGB", (draft_size, draft_size))
                img.seek(0)
                img.load()
                img = ImageOps.exif_transpose(img)
                return to_rgb(img)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageDecodeError(path, "decompression_bomb", f"refused: {e}") from None
    except Image.UnidentifiedImageError:
        raise ImageDecodeError(
            path, "not_an_image", f"not a supported image (allowed: {', '.join(ALLOWED_FORMATS)})"
        ) from None
    except FileNotFoundError:
        raise ImageDecodeError(path, "missing", "no such file") from None
    except IsADirectoryError:
        raise ImageDecodeError(path, "not_a_file", "is a directory") from None
    except PermissionError:
        raise ImageDecodeError(path, "unreadable", "permission denied") from None
    except (OSError, SyntaxError, ValueError) as e:
        # Truncated or corrupt data surfaces as OSError ("image file is truncated") at load().
        raise ImageDecodeError(path, "corrupt", f"corrupt or truncated image: {e}") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB on purpose, not by Pillow's defaults.

    - 16/32-bit integer and float grayscale are scaled from their actual range (convert('RGB') would clip them);
    - transparency (LA, RGBA, PA, P with a transparent index) is composited on BACKGROUND_RGB;
    - CMYK, YCbCr, 1-bit and palette images go through Pillow's colour conversions.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16"):
            scale = 65535.0
        else:
            lo, hi = float(arr.min()), float(arr.max())
            scale = hi if lo >= 0 and hi > 255 else 255.0
            if mode == "F" and hi <= 1.0:
                scale = 1.0
        gray = np.clip(np.rint(arr / scale * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "P" and "transparency" in img.info or mode in ("PA", "LA", "La", "RGBa"):
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode == "RGBA":
        background = Image.new("RGB", img.size, BACKGROUND_RGB)
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img.convert("RGB")


def resize_shorter_side(img: Image.Image, size: int, interpolation: str = "bilinear") -> Image.Image:
    """Resize so that the shorter side equals `size`, keeping the aspect ratio."""
    w, h = img.size
    if min(w, h) == size:
        return img
    if w <= h:
        new_w, new_h = size, max(size, round(h * size / w))
    else:
        new_w, new_h = max(size, round(w * size / h)), size
    return img.resize((new_w, new_h), _RESAMPLE[interpolation])


def center_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def normalize(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """uint8 HWC RGB -> float32 CHW, scaled to [0, 1], minus mean, divided by std, in spec.channel_order."""
    arr = np.asarray(img, dtype=np.float32) / 255.0  # (H, W, 3)
    arr = (arr - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    if spec.channel_order == "BGR":
        arr = arr[..., ::-1]
    return np.ascontiguousarray(arr.transpose(2, 0, 1))  # (3, H, W)


def preprocess(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """THE preprocessing: RGB PIL image -> float32 (3, image_size, image_size). See PreprocessSpec."""
    if img.mode != "RGB":
        img = to_rgb(img)
    img = resize_shorter_side(img, spec.resize_size, spec.interpolation)
    img = center_crop(img, spec.image_size)
    return normalize(img, spec)


def preprocess_batch(images: list[Image.Image], spec: PreprocessSpec) -> np.ndarray:
    return np.stack([preprocess(im, spec) for im in images]) if images else np.zeros(
        (0, 3, spec.image_size, spec.image_size), np.float32
    )


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES

"""Safe image decoding and THE preprocessing definition.

numpy + Pillow only (no torch), so that training evaluation, export verification and predict all run the exact
same code path, and a deployment machine needs no torch.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from vitdeploy.core.config import PreprocessSpec
from vitdeploy.errors import ImageDecodeError

# Formats we decode. Everything else (EPS runs Ghostscript, for one) is refused before Pillow parses it.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# Fully transparent pixels and the transparent parts of RGBA/LA/P images are composited onto this colour.
BACKGROUND_RGB = (255, 255, 255)
# A truncated file must be an error, never a grey-filled prediction (Pillow's default is already False;
# we pin it because other libraries in the same process sometimes flip it globally).
ImageFile.LOAD_TRUNCATED_IMAGES = False

RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}




# decode_image drafts a JPEG only when its shorter side is at least this many times the target size; at 1x the
# DCT box filter would dominate the result (mean error ~1.4/255, max ~20/255 measured) instead of ~0.3/255.
DRAFT_MARGIN = 2
# EXIF orientation tag and the transposition that turns the stored pixels into what a person sees.
EXIF_ORIENTATION = 0x0112
EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Modes to_rgb converts on purpose. Others (LAB, HSV: rare TIFFs) are refused rather than guessed at.
SUPPORTED_MODES = frozenset(
    ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "I", "I;16", "I;16B", "I;16L",
     "I;16N", "F")
)


def decode_image(
    path: str | os.PathLike[str], draft_size: int | None = None, interpolation: str = "bilinear",
    data: bytes | None = None,
) -> Image.Image:
    """Open an image file and return a fully loaded RGB image, or raise ImageDecodeError.

    `data`: the image's bytes (an upload to `vitdeploy serve`), decoded with the same checks; `path` then only
    names it in errors.

    - only ALLOWED_FORMATS are decoded; the first frame of animated GIF/WebP/multi-page TIFF is used;
    - EXIF orientation is applied, so the pixels are what a person sees;
    - every mode becomes RGB deliberately (see to_rgb);
    - decompression bombs (more than Image.MAX_IMAGE_PIXELS pixels) and truncated files raise instead of
      producing a prediction.
    `draft_size` (pass PreprocessSpec.resize_size, or use decode_for_preprocess): a JPEG whose shorter side is
    at least DRAFT_MARGIN x draft_size is decoded at a reduced scale (Image.draft: 1/2, 1/4 or 1/8, done in
    the DCT, several times faster) and resized so that its shorter side is draft_size with `interpolation`.
    That equals full decoding + resize_shorter_side to within 0.2-0.4/255 on average and 6/255 at most on
    photos (1.1/255 on average for white noise, the worst case; tests/test_images.py checks the bound);
    other images are returned at full size.

    Thread-safe: it touches no global state (warnings.catch_warnings would not be), so a pool of threads can
    decode in parallel; Pillow releases the GIL while decoding.
    """
    path = Path(path)
    try:
        if (len(data) if data is not None else path.stat().st_size) == 0:
            raise ImageDecodeError(path, "empty", "file is empty")
        # Image.open raises DecompressionBombError above 2x MAX_IMAGE_PIXELS; _load_rgb refuses 1x-2x too.
        img = Image.open(io.BytesIO(data) if data is not None else path, formats=ALLOWED_FORMATS)
        rgb = None
        try:
            rgb = _load_rgb(img, path, draft_size, interpolation)
            return rgb
        finally:
            if rgb is not img:  # `img` itself is returned only when load() already closed its file
                img.close()
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as e:
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
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        # Truncated or corrupt data surfaces as OSError ("image file is truncated") at load().
        raise ImageDecodeError(path, "corrupt", f"corrupt or truncated image: {e}") from None


def _load_rgb(img: Image.Image, path: Path, draft_size: int | None, interpolation: str) -> Image.Image:
    if img.width * img.height > Image.MAX_IMAGE_PIXELS:
        raise ImageDecodeError(
            path, "decompression_bomb",
            f"refused: {img.width}x{img.height} pixels is over the limit of {Image.MAX_IMAGE_PIXELS}",
        )
    if img.mode not in SUPPORTED_MODES:
        raise ImageDecodeError(path, "unsupported_mode", f"unsupported pixel mode {img.mode!r}")
    full_size = img.size
    draft_box = None
    # MPO: multi-picture JPEGs from phone cameras. The margin keeps the draft's box filter well above the final
    # resolution, so the final bilinear/bicubic resize decides the result.
    if draft_size and img.format in ("JPEG", "MPO") and min(full_size) >= DRAFT_MARGIN * draft_size:
        target = DRAFT_MARGIN * draft_size
        drafted = img.draft("RGB", (target, target))
        # draft() also answers when it keeps the full scale; only a real reduction needs the resize below
        draft_box = drafted[1] if drafted and img.size != full_size else None
    img.load()
    # Read after load(): a PNG may store its eXIf chunk after the pixels. getexif() also reads XMP orientation.
    transpose = EXIF_TRANSPOSE.get(img.getexif().get(EXIF_ORIENTATION))
    rgb = to_rgb(img)
    if draft_box is not None:
        # The drafted image covers the original's area plus part of a padding block at the right and bottom
        # edges; `box` maps exactly the original area, so the geometry matches a full decode. This happens in
        # the stored orientation, where the box is valid; the EXIF rotation comes after.
        rgb = resample(rgb, shorter_side_size(full_size, draft_size), interpolation, draft_box)
    if transpose is not None:
        rgb = rgb.transpose(transpose)
    if rgb is img and img.fp is not None:
        rgb = img.copy()  # multi-frame files stay open after load() (for seek); the caller closes them
    return rgb


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any supported Pillow mode to 8-bit RGB on purpose, not by Pillow's defaults.

    - 16-bit grayscale is scaled from 0..65535 (convert('RGB') would clip everything above 255 to white);
      32-bit integer grayscale by the range its values fit (0..255, 0..65535, else its own min..max);
      float grayscale from 0..1 when it fits, else its own min..max;
    - transparency (LA, PA, RGBA, P with a transparent colour) is composited on BACKGROUND_RGB;
    - CMYK, YCbCr, 1-bit, L and palette images go through Pillow's colour conversions.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_gray_to_uint8(np.asarray(img), mode), "L").convert("RGB")
    if mode == "P" and "transparency" in img.info or mode in ("PA", "LA", "RGBa"):
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode == "RGBA":
        background = Image.new("RGB", img.size, BACKGROUND_RGB)
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img.convert("RGB")


def _gray_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    arr = arr.astype(np.float64)
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if mode.startswith("I;16"):
        lo, hi = 0.0, 65535.0
    elif mode == "I" and lo >= 0 and hi <= 255:
        lo, hi = 0.0, 255.0
    elif mode == "I" and lo >= 0 and hi <= 65535:
        lo, hi = 0.0, 65535.0
    elif mode == "F" and lo >= 0 and hi <= 1:
        lo, hi = 0.0, 1.0
    scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def decode_for_preprocess(
    path: str | os.PathLike[str], spec: PreprocessSpec, data: bytes | None = None
) -> Image.Image:
    """decode_image with the JPEG draft shortcut sized for `spec`; preprocess() of the result is the same
    (within decode_image's tolerance) as preprocess() of the fully decoded image.

    The shortcut keeps the aspect ratio, so a "stretch" spec decodes in full: its one resize squeezes the sides
    by different factors, and a drafted copy would add a second resampling to the longer side.
    """
    draft_size = spec.resize_size if spec.resize_mode == "shorter_side" else None
    return decode_image(path, draft_size=draft_size, interpolation=spec.interpolation, data=data)


def shorter_side_size(size: tuple[int, int], shorter: int) -> tuple[int, int]:
    """(width, height) scaled so that the shorter side equals `shorter`, aspect ratio kept.

    The longer side is truncated, int(shorter * long / short), as torchvision's Resize(int) (so timm's eval
    transform) and Hugging Face's shortest-edge resize compute it: rounding instead moves it by a pixel, which
    rescales that axis by ~0.3% and shifts its crop (measured up to 16/255 mean difference on photos).
    """
    w, h = size
    if w <= h:
        return shorter, int(shorter * h / w)
    return int(shorter * w / h), shorter


def resize_shorter_side(img: Image.Image, size: int, interpolation: str = "bilinear") -> Image.Image:
    """Resize so that the shorter side equals `size`, keeping the aspect ratio."""
    if min(img.size) == size:
        return img
    return resample(img, shorter_side_size(img.size, size), interpolation)


def resample(img: Image.Image, size: tuple[int, int], interpolation: str,
             box: tuple[float, float, float, float] | None = None) -> Image.Image:
    """Image.resize(size, filter, box), its two passes in a fixed order: the width first, then the height.

    NOTE: Pillow 13 picks the order itself (the height first when it shrinks much more than the width), and the
    order moves pixels by 1/255 (measured: 35,005 of 196,608 values of a 233x377 -> 256x256 resize). A fixed
    order keeps THE preprocessing the same under every Pillow version, and lets the browser's vitdeploy.js
    reproduce it exactly. Each call below resizes one axis, so Pillow has no order to choose.
    """
    left, top, right, bottom = box if box is not None else (0, 0, *img.size)
    width, height = size
    if interpolation == "nearest" or (img.width == width and (left, right) == (0, width)) or (
            img.height == height and (top, bottom) == (0, height)):
        return img.resize(size, RESAMPLE[interpolation], box=box, reducing_gap=None)  # one pass, or none
    columns = img.resize((width, img.height), RESAMPLE[interpolation], box=(left, 0, right, img.height),
                         reducing_gap=None)
    return columns.resize(size, RESAMPLE[interpolation], box=(0, top, width, bottom), reducing_gap=None)


def crop_offset(length: int, size: int) -> int:
    """Where a centered `size` starts in `length`: round((length - size) / 2), half to even, as torchvision's
    CenterCrop (timm's eval transform) places it."""
    return int(round((length - size) / 2.0))


def center_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    left, top = crop_offset(w, size), crop_offset(h, size)
    return img.crop((left, top, left + size, top + size))


def normalize(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """uint8 HWC RGB -> float32 CHW, scaled to [0, 1], minus mean, divided by std, in spec.channel_order."""
    # Transpose while still uint8 (a quarter of the bytes), then compute in place: the same float32 operations
    # in the same order as (x / 255 - mean) / std on HWC, so bit-identical, at about half the time.
    order = slice(None, None, -1) if spec.channel_order == "BGR" else slice(None)
    chw = np.asarray(img).transpose(2, 0, 1)[order]  # (3, H, W) uint8 view
    out = chw.astype(np.float32, order="C")
    out /= np.float32(255.0)
    out -= np.asarray(spec.mean, np.float32)[order, None, None]
    out /= np.asarray(spec.std, np.float32)[order, None, None]
    return out


def resized_center_crop(img: Image.Image, resize_size: int, crop_size: int, interpolation: str) -> Image.Image:
    """Resize the shorter side to `resize_size`, then center-crop `crop_size`: computed by resizing only the
    columns that survive the crop (Pillow's `box`), with the same scale and filter as the full resize.

    NOTE: this is most of predict's per-image CPU time; resizing only the kept columns skips most of the cropped
    output of landscape photos (224x256 instead of 341x256 for a 640x480 photo). The rows are resized in full:
    a box that cuts rows gets other vertical filter weights from Pillow (13.0) than the full resize (measured: up
    to 9/255 apart on noise, 8/255 on a photo), while a box that cuts columns only reproduces the full resize to
    within 1/255 (rounding).
    """
    w, h = img.size
    if min(w, h) == resize_size:  # already at scale (JPEG draft, or the image was this size): just crop
        return center_crop(img, crop_size)
    rw, rh = shorter_side_size((w, h), resize_size)
    if min(w, h) < resize_size:  # enlarging a small image: cheap in full, and a box is 2/255 off there
        return center_crop(resample(img, (rw, rh), interpolation), crop_size)
    left, top = crop_offset(rw, crop_size), crop_offset(rh, crop_size)  # the crop, in resized coordinates
    sx = w / rw  # resized -> original coordinates
    box = (left * sx, 0, (left + crop_size) * sx, h)
    columns = resample(img, (crop_size, rh), interpolation, box)
    return columns.crop((0, top, crop_size, top + crop_size))


def stretched_center_crop(img: Image.Image, resize_size: int, crop_size: int, interpolation: str) -> Image.Image:
    """Resize to `resize_size` x `resize_size` (aspect ratio not kept), then center-crop `crop_size`."""
    if img.size != (resize_size, resize_size):
        img = resample(img, (resize_size, resize_size), interpolation)
    return center_crop(img, crop_size) if resize_size != crop_size else img


def preprocess(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """THE preprocessing: RGB PIL image -> float32 (3, image_size, image_size). See PreprocessSpec."""
    if img.mode != "RGB":
        img = to_rgb(img)
    resize = stretched_center_crop if spec.resize_mode == "stretch" else resized_center_crop
    img = resize(img, spec.resize_size, spec.image_size, spec.interpolation)
    return normalize(img, spec)


def preprocess_batch(images: list[Image.Image], spec: PreprocessSpec) -> np.ndarray:
    return np.stack([preprocess(im, spec) for im in images]) if images else np.zeros(
        (0, 3, spec.image_size, spec.image_size), np.float32
    )


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES

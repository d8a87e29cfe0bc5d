"""Safe image decoding and THE preprocessing definition.

numpy + Pillow only (no torch), so that training evaluation, export verification and predict all run the exact
same code path, and a deployment machine needs no torch.
"""

from __future__ import annotations

import functools
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageFile

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
# The colour space (the profile header's) that an embedded ICC profile must describe for each decoded mode; a
# palette is expanded to RGB or RGBA first, and so is a grey image with an RGB profile (Pillow writes one when it
# converts an RGB image to grey), as Chromium reads it (sharp ignores that profile). A profile of another space is
# ignored.
PROFILE_SPACES = {"RGB": "RGB ", "RGBA": "RGB ", "L": "GRAY", "LA": "GRAY", "CMYK": "CMYK"}
# What the colours become: alpha is kept (to_rgb composites it afterwards), grey becomes RGB.
PROFILE_OUTPUT_MODES = {"RGB": "RGB", "RGBA": "RGBA", "L": "RGB", "LA": "RGBA", "CMYK": "RGB"}
# An RGB profile whose conversion moves no colour by more than this (sRGB IEC61966-2.1 as cameras embed it: 1 level
# in 0.2% of the colours) is sRGB: its pixels are kept as stored, as Chromium keeps them.
SRGB_TOLERANCE_LEVELS = 1


def decode_image(path: str | os.PathLike[str], data: bytes | None = None) -> Image.Image:
    """Open an image file and return a fully loaded RGB image, or raise ImageDecodeError.

    `data`: the image's bytes (an upload to `vitdeploy serve`), decoded with the same checks; `path` then only
    names it in errors.

    - only ALLOWED_FORMATS are decoded; the first frame of animated GIF/WebP/multi-page TIFF is used;
    - an embedded ICC colour profile is converted to sRGB (to_srgb), as browsers and sharp decode;
    - EXIF orientation is applied, so the pixels are what a person sees;
    - every mode becomes RGB deliberately (see to_rgb);
    - decompression bombs (more than Image.MAX_IMAGE_PIXELS pixels) and truncated files raise instead of
      producing a prediction.

    NOTE: every image is decoded at full scale, JPEGs included. A JPEG drafted at 1/2-1/8 scale in the DCT
    (Image.draft) is several times faster to decode, but its pixels after THE preprocessing are not a full
    decode's (benchmarks/decode_cost.py, 42 photo JPEGs: up to 14/255 for a 16 px model, 8/255 at 64 px, in 30%
    and 15% of the values), and every client (browsers, sharp, OpenCV, a Triton client) decodes in full.

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
            rgb = _load_rgb(img, path)
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


def _load_rgb(img: Image.Image, path: Path) -> Image.Image:
    if img.width * img.height > Image.MAX_IMAGE_PIXELS:
        raise ImageDecodeError(
            path, "decompression_bomb",
            f"refused: {img.width}x{img.height} pixels is over the limit of {Image.MAX_IMAGE_PIXELS}",
        )
    if img.mode not in SUPPORTED_MODES:
        raise ImageDecodeError(path, "unsupported_mode", f"unsupported pixel mode {img.mode!r}")
    img.load()
    # Read after load(): a PNG may store its eXIf chunk after the pixels. getexif() also reads XMP orientation.
    transpose = EXIF_TRANSPOSE.get(img.getexif().get(EXIF_ORIENTATION))
    rgb = to_rgb(to_srgb(img))
    if transpose is not None:
        rgb = rgb.transpose(transpose)
    if rgb is img and img.fp is not None:
        rgb = img.copy()  # multi-frame files stay open after load() (for seek); the caller closes them
    return rgb


def to_srgb(img: Image.Image) -> Image.Image:
    """The image's colours converted from its embedded ICC profile to sRGB (LittleCMS, perceptual intent), or the
    image itself where it has no profile, a broken one, one of another colour space than its pixels, or an sRGB one.

    Why: an image's numbers mean colours only through its profile (Adobe RGB from cameras, Display P3 from phones,
    a printer's grey), and browsers and sharp (transformers.js in Node) convert them to sRGB when they decode:
    measured, within one level of this conversion, where the unconverted pixels were up to 107/255 off (scikit-
    image's color.png). Where the two differ this follows Chromium, what a person sees in a browser: a grey image
    with a grey profile is converted, and one with an RGB profile is read as RGB and converted (sharp leaves both
    as stored: docs/web.md has what that moves).
    """
    profile = img.info.get("icc_profile")
    if not profile:
        return img
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA" if img.mode == "PA" or "transparency" in img.info else "RGB")
    if img.mode in ("L", "LA") and _profile_space(bytes(profile)) == PROFILE_SPACES["RGB"]:
        img = img.convert("RGB" if img.mode == "L" else "RGBA")
    if img.mode not in PROFILE_SPACES:
        return img  # 1-bit, 16-bit and float grey, YCbCr: no 8-bit LittleCMS layout; to_rgb converts them as before
    transform = _srgb_transform(bytes(profile), img.mode)
    return img if transform is None else transform.apply(img)


@functools.lru_cache(maxsize=32)
def _profile_space(profile: bytes) -> str | None:
    """The colour space an ICC profile describes ("RGB ", "GRAY", "CMYK", ...); None where LittleCMS cannot read it."""
    try:
        return ImageCms.ImageCmsProfile(io.BytesIO(profile)).profile.xcolor_space
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return None


@functools.lru_cache(maxsize=32)
def _srgb_transform(profile: bytes, mode: str) -> ImageCms.ImageCmsTransform | None:
    """A LittleCMS transform from `profile` to sRGB for `mode`'s pixels; None for a profile LittleCMS cannot read or
    of another colour space than the mode's, or an sRGB profile (SRGB_TOLERANCE_LEVELS).
    Cached: photos of one camera share a profile, and building a transform costs more than applying it to a small
    image. LittleCMS transforms may be applied from many threads at once."""
    if _profile_space(profile) != PROFILE_SPACES[mode]:
        return None
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        transform = ImageCms.buildTransform(source, _srgb_profile(), mode, PROFILE_OUTPUT_MODES[mode])
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return None
    if mode in ("RGB", "RGBA"):  # an sRGB profile (many photos carry one): the pixels as stored, as Chromium keeps
        probe = _identity_probe()  # them (LittleCMS moves 0.2% of colours by a level, sharp too)
        moved = np.abs(np.asarray(transform.apply(probe.convert(mode)))[..., :3].astype(np.int16) - np.asarray(probe))
        if moved.max() <= SRGB_TOLERANCE_LEVELS:
            return None
    return transform


@functools.cache
def _identity_probe() -> Image.Image:
    """Every level of each channel alone and of grey, and a 32-step cube of colours: a transform that keeps all of
    them within a level keeps every colour within a level (its curves and matrix are the identity's)."""
    ramp = np.arange(256, dtype=np.uint8)
    zero = np.zeros(256, np.uint8)
    ramps = np.stack([np.stack(c, axis=1) for c in ((ramp, zero, zero), (zero, ramp, zero), (zero, zero, ramp),
                                                     (ramp, ramp, ramp))])  # (4, 256, 3)
    steps = np.linspace(0, 255, 32).round().astype(np.uint8)
    cube = np.stack(np.meshgrid(steps, steps, steps, indexing="ij"), axis=-1).reshape(128, 256, 3)
    return Image.fromarray(np.concatenate([ramps, cube]), "RGB")


@functools.cache
def _srgb_profile() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


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
    if min(w, h) == resize_size:  # already at scale: just crop
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

"""images.py: safe decoding of every format/mode we accept, refusal of everything else, THE preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from builders import png_header_only, smooth_rgb
from icc_profiles import ADOBE_RGB_COLORANTS, ADOBE_RGB_GAMMA, grey_profile, rgb_profile
from PIL import Image, ImageCms

from vitdeploy.core import images
from vitdeploy.core.config import PreprocessSpec
from vitdeploy.core.images import ImageDecodeError, decode_image, preprocess

SPEC_224 = PreprocessSpec(image_size=224, resize_size=256)


def kind_of(path: Path) -> str:
    with pytest.raises(ImageDecodeError) as err:
        decode_image(path)
    assert str(path) in str(err.value)
    return err.value.kind


# --- refused inputs ---------------------------------------------------------------------------------------


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    assert kind_of(path) == "empty"


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture\n")
    assert kind_of(path) == "not_an_image"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file_is_an_error_not_grey_pixels(tmp_path, fmt):
    full = tmp_path / f"full.{fmt.lower()}"
    smooth_rgb(128, 96).save(full, fmt)
    data = full.read_bytes()
    cut = tmp_path / f"cut.{fmt.lower()}"
    cut.write_bytes(data[: len(data) // 2])
    assert kind_of(cut) == "corrupt"


@pytest.mark.parametrize("side", [10_000, 30_000])  # 1e8 pixels: Pillow only warns; 9e8: Pillow raises
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb_header_is_refused(tmp_path, side):
    assert side * side > Image.MAX_IMAGE_PIXELS
    assert kind_of(png_header_only(tmp_path / "bomb.png", side, side)) == "decompression_bomb"


def test_format_outside_the_allow_list_is_refused(tmp_path):
    path = tmp_path / "picture.pcx"
    smooth_rgb(8, 8).save(path, "PCX")
    assert kind_of(path) == "not_an_image"


def test_unsupported_pixel_mode_is_refused(tmp_path):
    path = tmp_path / "lab.tif"
    Image.new("LAB", (8, 8)).save(path)
    assert kind_of(path) == "unsupported_mode"


def test_missing_file_and_directory(tmp_path):
    assert kind_of(tmp_path / "nope.png") == "missing"
    folder = tmp_path / "folder.png"
    folder.mkdir()
    assert kind_of(folder) == "not_a_file"


# --- every accepted mode becomes RGB deliberately -----------------------------------------------------------


def test_cmyk_jpeg(tmp_path):
    rgb = smooth_rgb(64, 48)
    path = tmp_path / "cmyk.jpg"
    rgb.convert("CMYK").save(path, "JPEG", quality=95)
    assert Image.open(path).mode == "CMYK"
    decoded = decode_image(path)
    assert decoded.mode == "RGB"
    expected = np.asarray(rgb.convert("CMYK").convert("RGB"), np.float32)
    # JPEG at quality 95: a couple of levels of compression noise, not inverted or shifted colours
    assert np.abs(np.asarray(decoded, np.float32) - expected).mean() < 3


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    raw = np.array([[0, 16384, 32768, 65535]], np.uint16).repeat(4, axis=0)
    path = tmp_path / "gray16.png"
    Image.fromarray(raw).save(path)
    assert Image.open(path).mode == "I;16"
    decoded = np.asarray(decode_image(path))
    assert decoded.shape == (4, 4, 3)
    assert decoded[0, :, 0].tolist() == [0, 64, 128, 255]  # convert("RGB") would give [0, 255, 255, 255]
    assert (decoded[..., 0] == decoded[..., 1]).all() and (decoded[..., 1] == decoded[..., 2]).all()


def test_32_bit_int_and_float_grayscale(tmp_path):
    ints = tmp_path / "int32.tif"
    Image.fromarray(np.array([[0, 1000, 65535]], np.int32)).save(ints)
    assert np.asarray(decode_image(ints))[0, :, 0].tolist() == [0, 4, 255]
    floats = tmp_path / "float.tif"
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32)).save(floats)
    assert np.asarray(decode_image(floats))[0, :, 0].tolist() == [0, 128, 255]


def test_palette_png_with_transparency_is_composited_on_white(tmp_path):
    img = Image.new("P", (4, 2))
    img.putpalette([255, 0, 0, 0, 0, 255])  # index 0 red, index 1 blue
    img.putdata([0, 0, 1, 1] * 2)
    path = tmp_path / "palette.png"
    img.save(path, transparency=0)  # red is the transparent colour
    decoded = np.asarray(decode_image(path))
    assert decoded[0, 0].tolist() == list(images.BACKGROUND_RGB)
    assert decoded[0, 3].tolist() == [0, 0, 255]


def test_rgba_png_is_composited_on_white(tmp_path):
    arr = np.zeros((1, 3, 4), np.uint8)
    arr[0, :, 0] = 255  # red everywhere
    arr[0, :, 3] = [0, 128, 255]  # transparent, half, opaque
    path = tmp_path / "rgba.png"
    Image.fromarray(arr, "RGBA").save(path)
    decoded = np.asarray(decode_image(path))
    assert decoded[0, 0].tolist() == [255, 255, 255]
    assert decoded[0, 1, 0] == 255 and 125 <= decoded[0, 1, 1] <= 129  # half-way between red and white
    assert decoded[0, 2].tolist() == [255, 0, 0]


def test_gray_alpha_and_one_bit_png(tmp_path):
    la = tmp_path / "la.png"
    Image.fromarray(np.array([[[0, 0], [0, 255]]], np.uint8), "LA").save(la)
    assert np.asarray(decode_image(la))[0].tolist() == [[255, 255, 255], [0, 0, 0]]
    one_bit = tmp_path / "bw.png"
    Image.fromarray(np.array([[0, 255]], np.uint8)).convert("1").save(one_bit)
    assert np.asarray(decode_image(one_bit))[0].tolist() == [[0, 0, 0], [255, 255, 255]]


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(path).n_frames == 3
    assert np.asarray(decode_image(path))[4, 4].tolist() == [255, 0, 0]


def test_multipage_tiff_uses_first_page(tmp_path):
    pages = [Image.new("RGB", (8, 8), (10, 20, 30)), Image.new("RGB", (8, 8), (200, 200, 200))]
    path = tmp_path / "pages.tiff"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    assert np.asarray(decode_image(path))[0, 0].tolist() == [10, 20, 30]


@pytest.mark.parametrize("fmt, suffix", [("WEBP", ".webp"), ("BMP", ".bmp"), ("PNG", ".png"), ("TIFF", ".tif")])
def test_lossless_formats_round_trip_exactly(tmp_path, fmt, suffix):
    img = smooth_rgb(40, 30)
    path = tmp_path / f"img{suffix}"
    img.save(path, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    assert np.array_equal(np.asarray(decode_image(path)), np.asarray(img))


def test_exif_orientation_is_applied(tmp_path):
    img = smooth_rgb(48, 32)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    img.save(path, "JPEG", quality=95, exif=exif.tobytes())
    decoded = decode_image(path)
    assert decoded.size == (32, 48)
    by_hand = Image.open(path).convert("RGB").transpose(Image.Transpose.ROTATE_270)
    assert np.array_equal(np.asarray(decoded), np.asarray(by_hand))


@pytest.mark.parametrize("mode", ["RGBA", "I;16", "P"])
def test_exif_orientation_survives_mode_conversion(tmp_path, mode):
    exif = Image.Exif()
    exif[0x0112] = 8  # "rotate 90 CCW to display"
    img = Image.fromarray(np.arange(24 * 16, dtype=np.uint16).reshape(16, 24)) if mode == "I;16" else (
        smooth_rgb(24, 16).convert(mode))
    path = tmp_path / "rotated.png"
    img.save(path, exif=exif.tobytes())
    assert decode_image(path).size == (16, 24)


# --- full decoding, colour profiles ----------------------------------------------------------------------


def levels(a: np.ndarray, b: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """|a - b| of two preprocessed tensors, in uint8 levels of the original image."""
    return np.abs(a - b) * np.asarray(spec.std, np.float32)[:, None, None] * 255


@pytest.mark.parametrize("orientation", [1, 6])
def test_large_jpegs_decode_in_full_as_every_client_does(tmp_path, orientation):
    # a JPEG many times the model's size: no reduced-scale (draft) decoding, the pixels are libjpeg's full decode
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "big.jpg"
    smooth_rgb(1100, 1031).save(path, "JPEG", quality=92, exif=exif.tobytes())
    with Image.open(path) as opened:
        full = opened.convert("RGB")
    if orientation == 6:
        full = full.transpose(Image.Transpose.ROTATE_270)
    assert np.array_equal(np.asarray(decode_image(path)), np.asarray(full))


def srgb_from_adobe_rgb(rgb: np.ndarray) -> np.ndarray:
    """The sRGB levels of Adobe RGB (1998) levels, from the colour science (not LittleCMS): the tone curve, the
    profile's D50 colorants to XYZ, sRGB's D50-adapted colorants back, sRGB's tone curve."""
    linear = (rgb / 255.0) ** ADOBE_RGB_GAMMA
    srgb_colorants = np.array([[0.4361, 0.2225, 0.0139], [0.3851, 0.7169, 0.0971], [0.1431, 0.0606, 0.7141]])
    xyz = linear @ np.asarray(ADOBE_RGB_COLORANTS)
    out = np.clip(xyz @ np.linalg.inv(srgb_colorants), 0, 1)
    encoded = np.where(out <= 0.0031308, 12.92 * out, 1.055 * out ** (1 / 2.4) - 0.055)
    return np.rint(encoded * 255)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_an_embedded_adobe_rgb_profile_is_converted_to_srgb(tmp_path, fmt):
    # colours well inside both gamuts, in flat 8x8 blocks (JPEG keeps them to a level or two)
    colours = np.array([[200, 60, 40], [40, 160, 90], [70, 90, 200], [128, 128, 128], [230, 200, 120],
                        [20, 30, 40], [180, 120, 160], [90, 200, 210]], np.uint8)
    pixels = np.repeat(np.repeat(colours[None], 8, axis=0), 8, axis=1)  # 8 x 64
    path = tmp_path / f"adobe.{fmt.lower()}"
    Image.fromarray(pixels).save(path, fmt, icc_profile=rgb_profile(), **({"quality": 98} if fmt == "JPEG" else {}))
    got = np.asarray(decode_image(path), np.float64)[4, 4::8]
    expected = srgb_from_adobe_rgb(colours.astype(np.float64))
    assert np.abs(expected - colours).max() > 15  # the profile matters: saturated colours move
    assert np.abs(got - expected).max() <= (1 if fmt == "PNG" else 3)


def test_a_grey_profile_is_converted_to_srgb_grey(tmp_path):
    path = tmp_path / "grey.png"
    Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16), "L").save(path, icc_profile=grey_profile())
    got = np.asarray(decode_image(path), np.int16)
    linear = (np.arange(256) / 255.0) ** 1.8
    expected = np.rint(255 * np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055))
    assert got.shape == (16, 16, 3) and (got == got[..., :1]).all()  # still grey
    assert np.abs(got[..., 0].ravel() - expected).max() <= 1


def test_a_grey_image_with_an_rgb_profile_is_read_as_rgb_as_chromium_does(tmp_path):
    # Pillow keeps the profile when it converts an Adobe RGB photo to grey; Chromium then applies it (measured)
    path = tmp_path / "grey-adobe.png"
    Image.fromarray(np.array([[40, 128, 230]], np.uint8), "L").save(path, icc_profile=rgb_profile())
    got = np.asarray(decode_image(path), np.int16)[0]
    expected = srgb_from_adobe_rgb(np.repeat(np.array([40.0, 128.0, 230.0])[:, None], 3, axis=1))
    assert np.abs(got - expected).max() <= 1 and np.abs(expected[:, 0] - [40, 128, 230]).max() >= 3


def test_transparency_is_composited_after_the_colour_conversion(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3] = (200, 60, 40)
    rgba[..., 3] = [[255, 0], [128, 255]]
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(path, icc_profile=rgb_profile())
    got = np.asarray(decode_image(path), np.int16)
    converted = srgb_from_adobe_rgb(np.array([200.0, 60.0, 40.0]))
    assert np.abs(got[0, 0] - converted).max() <= 1
    assert (got[0, 1] == 255).all()  # fully transparent: the background
    assert np.abs(got[1, 0] - np.rint((converted * 128 + 255 * 127) / 255)).max() <= 1


def test_a_palette_image_with_a_profile_is_converted(tmp_path):
    path = tmp_path / "palette.png"
    Image.new("RGB", (4, 4), (200, 60, 40)).convert("P", palette=Image.Palette.ADAPTIVE).save(
        path, icc_profile=rgb_profile())
    assert Image.open(path).mode == "P"
    got = np.asarray(decode_image(path), np.int16)[0, 0]
    assert np.abs(got - srgb_from_adobe_rgb(np.array([200.0, 60.0, 40.0]))).max() <= 1


def test_an_srgb_profile_changes_nothing(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    path = tmp_path / "srgb.png"
    Image.fromarray(pixels).save(path, icc_profile=ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    assert np.array_equal(np.asarray(decode_image(path)), pixels)


@pytest.mark.parametrize("profile", [rgb_profile()[:200], b"not a profile at all", grey_profile()],
                         ids=["truncated", "garbage", "grey-profile-on-rgb"])
def test_a_broken_or_mismatched_profile_is_ignored_as_browsers_do(tmp_path, profile):
    pixels = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    path = tmp_path / "odd-profile.png"
    Image.fromarray(pixels).save(path, icc_profile=profile)
    assert np.array_equal(np.asarray(decode_image(path)), pixels)


def test_the_profile_and_the_exif_orientation_are_both_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    pixels = np.zeros((8, 16, 3), np.uint8)
    pixels[:, :8] = (200, 60, 40)
    path = tmp_path / "rotated-adobe.png"
    Image.fromarray(pixels).save(path, icc_profile=rgb_profile(), exif=exif.tobytes())
    got = np.asarray(decode_image(path), np.int16)
    assert got.shape == (16, 8, 3)  # turned upright
    assert np.abs(got[0, 0] - srgb_from_adobe_rgb(np.array([200.0, 60.0, 40.0]))).max() <= 1  # the left half: top


def test_a_cmyk_jpeg_with_an_rgb_profile_ignores_it(tmp_path):
    # a CMYK image's profile must describe CMYK: an RGB one is ignored, Pillow's CMYK conversion as without one
    rgb = smooth_rgb(24, 16)
    plain, profiled = tmp_path / "plain.jpg", tmp_path / "profiled.jpg"
    rgb.convert("CMYK").save(plain, "JPEG", quality=95)
    rgb.convert("CMYK").save(profiled, "JPEG", quality=95, icc_profile=rgb_profile())
    assert Image.open(profiled).info.get("icc_profile")
    assert np.array_equal(np.asarray(decode_image(profiled)), np.asarray(decode_image(plain)))


def test_littlecms_ships_with_pillow():
    # ImageCms is Pillow's binding to LittleCMS, built into the wheel: no system library to install
    from PIL import features

    assert features.check("littlecms2")


# --- THE preprocessing ------------------------------------------------------------------------------------


def test_preprocess_normalizes_per_channel():
    spec = PreprocessSpec(image_size=4, resize_size=4, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    x = preprocess(Image.new("RGB", (4, 4), (255, 0, 51)), spec)
    assert x.shape == (3, 4, 4) and x.dtype == np.float32 and x.flags.c_contiguous
    np.testing.assert_allclose(x[:, 0, 0], [1.0, -1.0, 0.2], rtol=1e-6)
    bgr = preprocess(Image.new("RGB", (4, 4), (255, 0, 51)), PreprocessSpec(
        image_size=4, resize_size=4, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0), channel_order="BGR"))
    np.testing.assert_allclose(bgr[:, 0, 0], [0.2, -1.0, 1.0], rtol=1e-6)


@pytest.mark.parametrize("channel_order", ["RGB", "BGR"])
def test_normalize_is_bit_identical_to_the_reference_formula(channel_order):
    spec = PreprocessSpec(image_size=32, resize_size=32, channel_order=channel_order)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    reference = (np.asarray(img, np.float32) / 255.0 - np.asarray(spec.mean, np.float32)) / np.asarray(
        spec.std, np.float32)
    if channel_order == "BGR":
        reference = reference[..., ::-1]
    assert np.array_equal(images.normalize(img, spec), reference.transpose(2, 0, 1))


def test_preprocess_resizes_shorter_side_then_center_crops():
    # 40 x 20 image: a black band at the left edge, the rest white; shorter side 20 -> 10, so 20 x 10, and the
    # center crop keeps columns 5..14, beyond the reach of the black band through the bilinear filter
    arr = np.full((20, 40, 3), 255, np.uint8)
    arr[:, :4] = 0
    spec = PreprocessSpec(image_size=10, resize_size=10, mean=(0, 0, 0), std=(1, 1, 1))
    x = preprocess(Image.fromarray(arr), spec)
    assert x.shape == (3, 10, 10)
    np.testing.assert_allclose(x, 1.0)


def test_preprocess_batch_stacks_and_handles_empty():
    spec = PreprocessSpec(image_size=8, resize_size=8)
    batch = images.preprocess_batch([smooth_rgb(8, 8, s) for s in range(3)], spec)
    assert batch.shape == (3, 3, 8, 8)
    np.testing.assert_array_equal(batch[1], preprocess(smooth_rgb(8, 8, 1), spec))
    assert images.preprocess_batch([], spec).shape == (0, 3, 8, 8)


# --- geometry: torchvision's (timm's eval transform), Hugging Face's straight resize ------------------------------


def torchvision_resize_center_crop(img: Image.Image, resize: int, crop: int, interpolation: str) -> np.ndarray:
    """torchvision's Resize(int) + CenterCrop as documented: shorter side to `resize`, longer side truncated,
    crop offset round((size - crop) / 2), on the fully resized image."""
    w, h = img.size
    new = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
    full = img.resize(new, images.RESAMPLE[interpolation])
    left, top = int(round((new[0] - crop) / 2.0)), int(round((new[1] - crop) / 2.0))
    return np.asarray(full.crop((left, top, left + crop, top + crop)), np.int16)


@pytest.mark.parametrize("size", [(640, 427), (200, 377), (377, 427), (150, 100)])  # landscape, portrait, up-scaled
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_shorter_side_resize_and_crop_follow_torchvision(size, interpolation):
    img = smooth_rgb(*size, seed=3)
    got = np.asarray(images.resized_center_crop(img, 248, 224, interpolation), np.int16)
    # within one level of rounding (Pillow's weights for a sub-box differ in the last bit), on a few pixels only
    diff = np.abs(got - torchvision_resize_center_crop(img, 248, 224, interpolation))
    assert diff.max() <= 1 and diff.mean() < 0.01


def test_shorter_side_size_truncates_and_crop_offset_rounds_half_to_even():
    assert images.shorter_side_size((640, 427), 248) == (371, 248)  # 371.7 -> 371, as torchvision
    assert images.crop_offset(371, 224) == 74  # 73.5 -> 74
    assert images.crop_offset(369, 224) == 72  # 72.5 -> 72


def test_stretch_mode_resizes_both_sides_then_crops():
    # 40 x 20, the left half black: stretched to 10 x 10 the black half stays the left half (not cropped away)
    arr = np.full((20, 40, 3), 255, np.uint8)
    arr[:, :20] = 0
    spec = PreprocessSpec(image_size=10, resize_size=10, interpolation="nearest", mean=(0, 0, 0), std=(1, 1, 1),
                          resize_mode="stretch")
    x = preprocess(Image.fromarray(arr), spec)
    np.testing.assert_array_equal(x[0, 0], [0] * 5 + [1] * 5)
    cropped = PreprocessSpec(image_size=8, resize_size=10, interpolation="nearest", mean=(0, 0, 0), std=(1, 1, 1),
                             resize_mode="stretch")
    np.testing.assert_array_equal(preprocess(Image.fromarray(arr), cropped)[0, 0], [0] * 4 + [1] * 4)


def test_specs_from_before_the_resize_mode_read_as_shorter_side():
    old = {"image_size": 224, "resize_size": 256, "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3,
           "channel_order": "RGB"}
    assert PreprocessSpec.from_dict(old).resize_mode == "shorter_side"

"""ICC colour profiles built in code, for images whose colours are not sRGB (tests, benchmarks/raw_image.py).

A matrix/TRC display profile (ICC v2) is a 128-byte header, a tag table, and nine tags: the description and
copyright, the white point, the three colorants (the primaries in the D50 connection space) and one tone curve
per channel (a pure gamma); a grey profile has the white point and one curve. Pillow's ImageCms (LittleCMS),
sharp (libvips + LittleCMS) and Chromium (skcms) all read them. Adobe RGB (1998) with its published D50 colorants and gamma 563/256 is the one camera and photo editors
embed most often after sRGB; a wide-gamut profile moves saturated colours by tens of levels against sRGB.
"""

from __future__ import annotations

import struct

# Adobe RGB (1998), Bradford-adapted to D50 as the ICC connection space wants them.
ADOBE_RGB_COLORANTS = ((0.60974, 0.31111, 0.01947), (0.20528, 0.62567, 0.06087), (0.14919, 0.06322, 0.74457))
ADOBE_RGB_GAMMA = 563 / 256
D50 = (0.9642, 1.0, 0.8249)


def _s15f16(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz(x: float, y: float, z: float) -> bytes:
    return b"XYZ " + bytes(4) + _s15f16(x) + _s15f16(y) + _s15f16(z)


def _curve(gamma: float) -> bytes:
    return b"curv" + bytes(4) + struct.pack(">IH", 1, round(gamma * 256)) + bytes(2)  # u8Fixed8, padded to 4


def _description(text: str) -> bytes:
    ascii_text = text.encode("ascii") + b"\0"
    body = b"desc" + bytes(4) + struct.pack(">I", len(ascii_text)) + ascii_text
    body += struct.pack(">II", 0, 0) + struct.pack(">HB", 0, 0) + bytes(67)  # no Unicode, no ScriptCode text
    return body + bytes(-len(body) % 4)


def _text(text: str) -> bytes:
    body = b"text" + bytes(4) + text.encode("ascii") + b"\0"
    return body + bytes(-len(body) % 4)


def rgb_profile(name: str = "Adobe RGB (1998) built in code", colorants=ADOBE_RGB_COLORANTS,
                gamma: float = ADOBE_RGB_GAMMA) -> bytes:
    """The bytes of an ICC v2 RGB display profile with these D50 colorants and one gamma for every channel."""
    tags = [(b"desc", _description(name)), (b"cprt", _text("No copyright, test data")), (b"wtpt", _xyz(*D50)),
            (b"rXYZ", _xyz(*colorants[0])), (b"gXYZ", _xyz(*colorants[1])), (b"bXYZ", _xyz(*colorants[2])),
            (b"rTRC", _curve(gamma)), (b"gTRC", _curve(gamma)), (b"bTRC", _curve(gamma))]
    return _profile(b"RGB ", tags)


def _profile(colour_space: bytes, tags: list[tuple[bytes, bytes]]) -> bytes:
    offset = 128 + 4 + 12 * len(tags)
    table, data = struct.pack(">I", len(tags)), b""
    for signature, body in tags:
        table += signature + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = struct.pack(">I", size) + b"none" + bytes([2, 0x10, 0, 0]) + b"mntr" + colour_space + b"XYZ "
    header += struct.pack(">6H", 2026, 1, 1, 0, 0, 0) + b"acsp" + bytes(4) + bytes(4) + bytes(8) + bytes(8)
    header += struct.pack(">I", 0) + _s15f16(D50[0]) + _s15f16(D50[1]) + _s15f16(D50[2]) + b"none"
    header += bytes(128 - len(header))
    return header + table + data


def grey_profile(name: str = "Grey gamma 1.8 built in code", gamma: float = 1.8) -> bytes:
    """The bytes of an ICC v2 grey display profile: a D50 white and one tone curve (kTRC), a pure gamma."""
    return _profile(b"GRAY", [(b"desc", _description(name)), (b"cprt", _text("No copyright, test data")),
                              (b"wtpt", _xyz(*D50)), (b"kTRC", _curve(gamma))])

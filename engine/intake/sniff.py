"""What a file is, judged by its first bytes (never by its name), and the picture size its header
declares, read without Pillow so that a decompression bomb is turned away before any decoder sees it."""
from __future__ import annotations

import struct
from dataclasses import dataclass

# Formats intake decodes, by Pillow's format name.
PICTURE_FORMATS = ("PNG", "JPEG", "GIF", "WEBP")
PLEASE_UPLOAD = "upload PNG, JPEG or WebP"

# Signatures of things members send by mistake: (offset, magic, what it is, is it a picture format).
_OTHER_SIGNATURES: tuple[tuple[int, bytes, str, bool], ...] = (
    (0, b"%PDF", "a PDF", False),
    (0, b"BM", "a BMP", True),
    (0, b"II*\x00", "a TIFF", True),
    (0, b"MM\x00*", "a TIFF", True),
    (0, b"8BPS", "a Photoshop (PSD)", True),
    (0, b"\x00\x00\x01\x00", "an icon (ICO)", True),
    (0, b"\xff\x0a", "a JPEG XL", True),
    (4, b"JXL ", "a JPEG XL", True),
    (4, b"ftypheic", "an iPhone HEIC", True),
    (4, b"ftypheix", "an iPhone HEIC", True),
    (4, b"ftypmif1", "a HEIF", True),
    (4, b"ftypavif", "an AVIF", True),
    (4, b"ftyp", "a video", False),
    (0, b"\x1a\x45\xdf\xa3", "a video", False),
    (0, b"RIFF", "a RIFF media file (audio or video)", False),
    (0, b"Rar!\x1a\x07", "a RAR archive", False),
    (0, b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive", False),
    (0, b"\x1f\x8b", "a gzip archive", False),
    (0, b"MZ", "a program", False),
    (0, b"ID3", "an MP3", False),
    (0, b"OggS", "an audio file", False),
)
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")


@dataclass(frozen=True)
class Sniffed:
    format: str | None   # one of PICTURE_FORMATS, "ZIP", or None for anything else
    what: str            # in words, for messages: "a PNG", "a PDF", "text", "unknown data"
    picture: bool        # a picture format, even if not one intake reads (HEIC, TIFF…)


def sniff(data: bytes) -> Sniffed:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return Sniffed("PNG", "a PNG", True)
    if data.startswith(b"\xff\xd8\xff"):
        return Sniffed("JPEG", "a JPEG", True)
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return Sniffed("GIF", "a GIF", True)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return Sniffed("WEBP", "a WebP", True)
    if data.startswith(_ZIP_MAGICS):
        return Sniffed("ZIP", "a zip", False)
    for offset, magic, what, picture in _OTHER_SIGNATURES:
        if data[offset:offset + len(magic)] == magic:
            return Sniffed(None, what, picture)
    head = data[:512].lstrip()
    if head.startswith(b"<") and b"<svg" in data[:4096].lower():
        return Sniffed(None, "an SVG drawing", True)
    return Sniffed(None, "text" if _looks_like_text(data[:4096]) else "unknown data", False)


def _looks_like_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:
        # A multi-byte character cut by the 4096-byte window is still text.
        return error.start >= len(head) - 3
    return b"\x00" not in head


def declared_size(fmt: str, data: bytes) -> tuple[int, int] | None:
    """(width, height) as the header states it, or None when the header cannot be read (the decoder
    will then say the file is damaged)."""
    try:
        if fmt == "PNG":
            return struct.unpack(">II", data[16:24]) if data[12:16] == b"IHDR" else None
        if fmt == "GIF":
            return struct.unpack("<HH", data[6:10])
        if fmt == "WEBP":
            return _webp_size(data)
        if fmt == "JPEG":
            return _jpeg_size(data)
    except struct.error:
        return None
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X":   # extended (alpha, animation): 24-bit canvas size minus one
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if chunk == b"VP8L":   # lossless: 14-bit sizes minus one, packed after a 0x2f signature byte
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 ":   # lossy: 14-bit sizes after the 9d 01 2a start code
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Walks the marker segments up to the first start-of-frame, which holds height and width."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:          # fill byte before a marker
            pos += 1
            continue
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return width, height
        if marker == 0xDA:          # start of scan: no frame header before the image data
            return None
        if 0xD0 <= marker <= 0xD8 or marker == 0x01:   # markers without a length
            pos += 2
            continue
        pos += 2 + struct.unpack(">H", data[pos + 2:pos + 4])[0]
    return None

"""Builders for the pictures and zips the intake tests feed in: ordinary photos-like pictures, and the
broken, disguised, oversized and malicious files members (or attackers) send. Everything is generated
in memory; nothing is downloaded or checked in."""
from __future__ import annotations

import io
import struct
import zipfile
import zlib

import numpy as np
from PIL import Image, ImageCms


def photo(seed: int, size: tuple[int, int] = (160, 120), mode: str = "RGB") -> Image.Image:
    """A smooth, photo-like picture (blurry colour blobs plus grain) that differs per seed in its low
    frequencies, so that two seeds are never near-duplicates of each other."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize(size, Image.Resampling.BICUBIC), dtype=np.int16)
    grain = rng.integers(-12, 13, smooth.shape, dtype=np.int16)
    return Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8)).convert(mode)


def encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int) -> bytes:
    """A genuine, valid 1-bit PNG of width×height black pixels: a few kilobytes that would decode to
    width×height bytes in Pillow (20000×20000: 400 MB)."""
    row = b"\x00" + bytes((width + 7) // 8)
    packer = zlib.compressobj(9)
    rows_per_step = 1000
    idat = b"".join(packer.compress(row * min(rows_per_step, height - start))
                    for start in range(0, height, rows_per_step)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def png_rgb16(pixels: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow can read these but not write them)."""
    height, width, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(raw))
            + png_chunk(b"IEND", b""))


def png_chunk_types(data: bytes) -> list[bytes]:
    kinds, pos = [], 8
    while pos < len(data):
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        kinds.append(data[pos + 4:pos + 8])
        pos += 12 + length
    return kinds


def animated(frames: list[Image.Image], fmt: str) -> bytes:
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def jpeg_with_orientation(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", quality=95, exif=exif.tobytes())


def renamed_srgb_profile() -> bytes:
    """The built-in sRGB ICC profile with its description changed, so intake treats it as a foreign RGB
    profile and runs a real colour conversion (which, sRGB to sRGB, keeps the colours)."""
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    renamed = profile.replace("sRGB".encode("utf-16-be"), "Test".encode("utf-16-be"))
    assert renamed != profile
    return renamed


def make_zip(entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in entries.items():
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=compression)
    return buffer.getvalue()


def patch_zip_entry(data: bytes, name: str, *, flag_bits: int | None = None,
                    file_size: int | None = None) -> bytes:
    """Rewrites the header fields of one entry (both the local header and the central directory), the
    way a crafted zip would: the encryption flag, or an uncompressed size that lies."""
    patched = bytearray(data)
    encoded = name.encode()
    for signature, flag_at, size_at, name_len_at, name_at in ((b"PK\x03\x04", 6, 22, 26, 30),
                                                              (b"PK\x01\x02", 8, 24, 28, 46)):
        pos = patched.find(signature)
        while pos >= 0:
            name_len = struct.unpack("<H", patched[pos + name_len_at:pos + name_len_at + 2])[0]
            if bytes(patched[pos + name_at:pos + name_at + name_len]) == encoded:
                if flag_bits is not None:
                    patched[pos + flag_at:pos + flag_at + 2] = struct.pack("<H", flag_bits)
                if file_size is not None:
                    patched[pos + size_at:pos + size_at + 4] = struct.pack("<I", file_size)
            pos = patched.find(signature, pos + 4)
    return bytes(patched)


def gif_with_oversized_frame(screen: tuple[int, int], frame: tuple[int, int]) -> bytes:
    """A GIF whose logical screen is small but whose first frame claims to be far bigger: Pillow grows
    the picture to the frame, so a check of the screen size alone would let it through."""
    return (b"GIF89a" + struct.pack("<HHBBB", *screen, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
            + b"," + struct.pack("<HHHHB", 0, 0, *frame, 0) + b"\x02\x02\x4c\x01\x00;")


def mpo(frames: list[Image.Image]) -> bytes:
    """A multi-picture JPEG, as phones write for portrait mode: the photo, then a second picture."""
    return encode(frames[0], "MPO", save_all=True, append_images=frames[1:])

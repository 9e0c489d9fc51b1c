"""The one image decoder reads images as displayed and in their true range: EXIF orientation,
16-bit samples, palettes, greyscale, CMYK and transparency, against numpy references built
from the pixels the test wrote (io/images.py)."""
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from efficientsam_jax.errors import UserError
from efficientsam_jax.io import images

RNG = np.random.default_rng(0)
STORED = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)  # not square: rotations show


def encode(pil: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
  buffer = io.BytesIO()
  pil.save(buffer, format=fmt, **kwargs)
  return buffer.getvalue()


# EXIF orientation -> the displayed picture, from the tag's definition (where the stored 0th
# row and 0th column are shown), written with numpy only.
DISPLAYED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # 0th row top, 0th column right
    3: lambda a: a[::-1, ::-1],  # bottom, right
    4: lambda a: a[::-1],  # bottom, left
    5: lambda a: a.transpose(1, 0, 2),  # row left, column top
    6: lambda a: a.transpose(1, 0, 2)[:, ::-1],  # row right, column top: 90 degrees clockwise
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],  # row right, column bottom
    8: lambda a: a.transpose(1, 0, 2)[::-1],  # row left, column bottom: 90 counter-clockwise
}


@pytest.mark.parametrize("orientation", sorted(DISPLAYED))
def test_exif_orientation_gives_the_upright_picture(orientation):
  exif = Image.Exif()
  exif[0x0112] = orientation
  data = encode(Image.fromarray(STORED), exif=exif.tobytes())
  np.testing.assert_array_equal(images.decode(data), DISPLAYED[orientation](STORED))


def _png_16bit_rgb(samples: np.ndarray) -> bytes:
  """A 48-bit RGB PNG written byte by byte (Pillow cannot write one)."""
  h, w, _ = samples.shape
  rows = b"".join(b"\0" + samples[y].astype(">u2").tobytes() for y in range(h))
  chunk = lambda kind, body: (struct.pack(">I", len(body)) + kind + body
                              + struct.pack(">I", zlib.crc32(kind + body)))
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
          + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


SIXTEEN = np.array([[0, 255, 256, 1000, 32768, 65535]], np.uint16)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16bit_greyscale_keeps_its_range(fmt):
  decoded = images.decode(encode(Image.fromarray(SIXTEEN), fmt))
  expected = (SIXTEEN >> 8).astype(np.uint8)
  np.testing.assert_array_equal(decoded, np.repeat(expected[..., None], 3, axis=-1))
  assert decoded.max() == 255 and decoded[0, :4].max() == 3  # not clipped to white


def test_16bit_rgb_png_keeps_its_range():
  samples = np.stack([SIXTEEN, SIXTEEN[:, ::-1], np.full_like(SIXTEEN, 2570)], axis=-1)
  np.testing.assert_array_equal(images.decode(_png_16bit_rgb(samples)),
                                (samples >> 8).astype(np.uint8))


def test_greyscale_bilevel_and_palette_become_rgb():
  grey = STORED[..., 0]
  np.testing.assert_array_equal(images.decode(encode(Image.fromarray(grey))),
                                np.repeat(grey[..., None], 3, axis=-1))
  bits = grey > 127
  np.testing.assert_array_equal(images.decode(encode(Image.fromarray(bits))),
                                np.repeat(np.where(bits, 255, 0)[..., None], 3, axis=-1))
  palette = np.array([[10, 20, 30], [200, 100, 0], [0, 0, 255]], np.uint8)
  index = (grey % 3).astype(np.uint8)
  pil = Image.fromarray(index, mode="P")
  pil.putpalette(palette.ravel().tolist())
  np.testing.assert_array_equal(images.decode(encode(pil)), palette[index])


@pytest.mark.parametrize("fmt", ["TIFF", "JPEG"])
def test_cmyk_is_converted_to_rgb(fmt):
  cmyk = np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 128, 0, 64], [100, 50, 0, 100]]],
                  np.uint8)
  decoded = images.decode(encode(Image.fromarray(cmyk, mode="CMYK"), fmt, quality=100)
                          if fmt == "JPEG" else encode(Image.fromarray(cmyk, mode="CMYK"), fmt))
  c, m, y, k = (cmyk[..., i].astype(np.float64) for i in range(4))
  expected = np.stack([(255 - c) * (255 - k), (255 - m) * (255 - k), (255 - y) * (255 - k)],
                      axis=-1) / 255
  np.testing.assert_allclose(decoded, expected, atol=1 if fmt == "TIFF" else 6)


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
  a = alpha[..., None].astype(np.float64) / 255
  return rgb * a + 255 * (1 - a)


def test_transparent_pixels_are_shown_over_white():
  alpha = np.array([[0, 255, 128, 30, 255, 0, 200]] * 5, np.uint8)
  rgba = np.concatenate([STORED, alpha[..., None]], axis=-1)
  np.testing.assert_allclose(images.decode(encode(Image.fromarray(rgba, mode="RGBA"))),
                             _over_white(STORED, alpha), atol=1)
  grey = STORED[..., 1]
  la = Image.fromarray(np.stack([grey, alpha], axis=-1), mode="LA")
  np.testing.assert_allclose(images.decode(encode(la)),
                             _over_white(np.repeat(grey[..., None], 3, axis=-1), alpha), atol=1)
  # A palette whose colour 0 is transparent: the hidden red never shows.
  pil = Image.fromarray((STORED[..., 0] % 2).astype(np.uint8), mode="P")
  pil.putpalette([255, 0, 0, 0, 0, 255])
  decoded = images.decode(encode(pil, transparency=0))
  expected = np.where((STORED[..., 0] % 2 == 0)[..., None], [255, 255, 255], [0, 0, 255])
  np.testing.assert_array_equal(decoded, expected)


@pytest.mark.parametrize("array,word", [
    (np.arange(12, dtype=np.int32).reshape(3, 4) * 10**6, "32-bit integer"),
    (np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4), "floating-point"),
])
def test_samples_without_a_display_range_are_refused(array, word):
  with pytest.raises(UserError, match=f"scan.tif: {word}"):
    images.decode(encode(Image.fromarray(array), "TIFF"), "scan.tif")


def test_unreadable_bytes_and_paths_are_one_line_errors(tmp_path):
  with pytest.raises(UserError, match="bad.png: cannot read image"):
    images.decode(encode(Image.fromarray(STORED))[:60], "bad.png")
  with pytest.raises(UserError, match="no such image"):
    images.read(str(tmp_path / "missing.png"))
  with pytest.raises(UserError, match="is a directory"):
    images.read(str(tmp_path))

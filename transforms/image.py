"""The image transform: encoded JPEG/PNG/WebP/BMP/GIF bytes -> one normalised image tensor.

Each item is decoded, checked and resized on its own with Pillow (a bad item raises
InvalidInput naming `items[i]` and the rule, and never takes the process down); the decoded
uint8 pixels of the whole batch land in one preallocated array, and the per-channel
`(x * scale - mean) / std` normalisation and the layout change are done once for the batch in
numpy, in place in the preallocated output: float32 as x * (scale / std) - mean / std (within a
few float32 ulps of the exact value), float16 through a 256-entry lookup table per channel
(correctly rounded; numpy's float16 arithmetic is slow and would round twice).

A spec, as in a registration YAML::

    kind: image
    input: INPUT__0                 # the model's input tensor (required)
    mode: RGB                       # RGB (default) | BGR | L
    exif_transpose: true            # apply the EXIF orientation (default true)
    resize: {mode: shorter_side, size: 256, filter: bilinear}
    center_crop: [224, 224]
    dtype: float32                  # float32 (default) | float16 | uint8
    scale: 0.00392156862745098      # default 1/255 for float dtypes; not with uint8
    mean: [0.485, 0.456, 0.406]     # in the output's channel order (BGR order for mode BGR)
    std: [0.229, 0.224, 0.225]
    layout: NCHW                    # NCHW (default) | NHWC
    fast_decode: false              # JPEG reduced-size (DCT-scaled) decoding: true or aggressive
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from router.errors import InvalidInput
from transforms.base import TensorInfo, Transform, TransformLimits, item_error, register, spec_error

# Formats Pillow may try when opening an item; nothing else is even parsed (attack surface).
OPEN_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
# What `Image.format` may say afterwards: a multi-picture JPEG (cameras) opens as MPO.
ALLOWED_FORMATS = frozenset((*OPEN_FORMATS, "MPO"))
FORMATS_TEXT = "JPEG/PNG/WebP/BMP/GIF"

MODES = ("RGB", "BGR", "L")
RESIZE_MODES = ("exact", "shorter_side", "letterbox")
FILTERS: dict[str, Image.Resampling] = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}
DTYPES: dict[str, tuple[str, type[np.generic]]] = {
    "float32": ("FP32", np.float32),
    "float16": ("FP16", np.float16),
    "uint8": ("UINT8", np.uint8),
}
LAYOUTS = ("NCHW", "NHWC")
SPEC_KEYS = frozenset(
    ("input", "mode", "exif_transpose", "resize", "center_crop", "dtype", "scale", "mean", "std")
    + ("layout", "fast_decode")
)
RESIZE_KEYS = frozenset(("mode", "size", "filter", "fill"))
DEFAULT_FILL = 114

# EXIF orientation -> the transposition that undoes it (as PIL.ImageOps.exif_transpose).
_ORIENTATION = 0x0112
_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Magic numbers of formats people send by mistake, for a clearer error than "cannot identify".
_FOREIGN_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (0, b"%PDF", "PDF"),
    (0, b"8BPS", "PSD"),
    (0, b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (0, b"\xff\x4f\xff\x51", "JPEG 2000"),
    (4, b"ftyp", "HEIF/AVIF"),
    (0, b"\x00\x00\x01\x00", "ICO"),
)
_QUARTER_TURNS = frozenset(
    (
        Image.Transpose.TRANSPOSE,
        Image.Transpose.TRANSVERSE,
        Image.Transpose.ROTATE_90,
        Image.Transpose.ROTATE_270,
    )
)
_SIXTEEN_BIT_MODES = frozenset(("I;16", "I;16B", "I;16L", "I;16N", "I"))


@dataclass(frozen=True)
class ResizeSpec:
    """A validated `resize` block: mode, target size (H, W) or shorter side, filter and fill."""

    mode: str
    size: tuple[int, int] | int
    resample: Image.Resampling
    fill: int


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _choice(value: Any, key: str, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise spec_error(key, f"{value!r} is not one of {', '.join(choices)}")
    return value


def _flag(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise spec_error(key, f"must be true or false, not {value!r}")
    return value


def _hw(value: Any, key: str) -> tuple[int, int]:
    if not isinstance(value, list | tuple) or len(value) != 2 or not all(_is_int(v) and v > 0 for v in value):
        raise spec_error(key, f"must be [height, width] of two positive integers, not {value!r}")
    return int(value[0]), int(value[1])


def _channel_values(value: Any, key: str, channels: int) -> tuple[float, ...]:
    if not isinstance(value, list | tuple) or not all(_is_number(v) for v in value):
        raise spec_error(key, f"must be a list of {channels} numbers, not {value!r}")
    if len(value) != channels:
        raise spec_error(key, f"has {len(value)} values but the output has {channels} channel(s)")
    return tuple(float(v) for v in value)


def _place_center(dst: np.ndarray, src: np.ndarray) -> None:
    """Copies the centred overlap of src (h, w, C) into dst (H, W, C): crops or pads centrally.

    Offsets round down, so an odd excess puts the extra row/column at the bottom/right.
    Where src is smaller, the rest of dst keeps what it held (the padding value).
    """
    (dst_h, dst_w), (src_h, src_w) = dst.shape[:2], src.shape[:2]
    n_h, n_w = min(dst_h, src_h), min(dst_w, src_w)
    sy, sx = (src_h - n_h) // 2, (src_w - n_w) // 2
    dy, dx = (dst_h - n_h) // 2, (dst_w - n_w) // 2
    dst[dy : dy + n_h, dx : dx + n_w] = src[sy : sy + n_h, sx : sx + n_w]


def _pixels(img: Image.Image) -> np.ndarray:
    """The image as a (H, W, C) uint8 array."""
    arr = np.asarray(img)
    return arr[:, :, None] if arr.ndim == 2 else arr


def _foreign_format(data: bytes) -> str | None:
    for offset, magic, name in _FOREIGN_MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return name
    return None


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def to_mode(img: Image.Image, mode: str) -> Image.Image:
    """The image converted to 8-bit `mode` ("RGB" or "L"), as this transform defines it.

    - Alpha (RGBA, LA, PA, palette transparency) is dropped: the stored colour of each pixel is
      kept, as `Image.convert("RGB")` does; nothing is composited.
    - Palette (P), bilevel (1), CMYK and YCbCr go through `Image.convert`.
    - 16-bit greyscale (I;16*, and I, clipped to 0..65535) is rescaled to 8 bits with
      round(v * 255 / 65535); Pillow's own conversion would clip every value above 255.
    """
    if img.mode == mode:
        return img
    if img.mode in _SIXTEEN_BIT_MODES:
        wide = np.clip(np.asarray(img).astype(np.int64), 0, 65535)
        img = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8), "L")
        return img if mode == "L" else img.convert(mode)
    try:
        return img.convert(mode)
    except ValueError:  # e.g. La, LAB: no direct conversion
        return img.convert("RGBA").convert(mode)


@register
class ImageTransform(Transform):
    """Encoded images -> one (N, C, H, W) or (N, H, W, C) tensor for the model's `input`.

    Per item, in order: size check (limits.max_image_bytes); open (only JPEG, PNG, WebP, BMP and
    GIF are parsed; GIF and WebP give their first frame); header pixel check
    (limits.max_image_pixels) before anything is decoded; decode (truncated or corrupt data is
    InvalidInput); EXIF orientation; conversion to RGB or L (see `to_mode`: alpha is dropped,
    16-bit is rescaled); resize; letterbox padding; center crop; then for the whole batch
    BGR channel order, `(x * scale - mean) / std` and the layout.

    Resize modes: `exact` stretches to [H, W]; `letterbox` keeps the aspect ratio, fits the
    image inside [H, W] (content size rounded to the nearest pixel, at least 1) and centres it
    on a `fill`-valued canvas; `shorter_side` scales the shorter side to `size` (the other side
    rounded to the nearest pixel). `center_crop` [H, W] cuts the centre (offsets round down); an
    image smaller than the crop (possible only without resize) is centred on zeros.

    `fast_decode` (JPEG only; other formats decode as usual): before decoding, Pillow's
    `Image.draft` asks libjpeg for a DCT-scaled decode at 1/2, 1/4 or 1/8 size: the strongest
    reduction whose result is still at least the size the resize will produce, in both
    dimensions (after EXIF rotation); the real resize then runs from that smaller image. For
    mode L it also decodes only the luma channel. It saves IDCT, colour conversion and resize
    work (entropy decoding stays the same), but it is not bit-exact: libjpeg's scaled IDCT is
    a box-like filter, so the result differs slightly from the exact path. Measure it with
    `python -m benchmarks.images`, which reports the mean/max absolute difference against the
    exact path: on 640x480 photo-like JPEGs (q90) resized to 224x224 it measured about 1.2
    8-bit steps on average (0.5% of the range), up to ~40 steps at hard edges, for ~1.5x the
    exact path's throughput. `fast_decode: aggressive` decodes one halving smaller still (at
    least half the target size) and lets the resize upsample: faster again, with about twice
    the difference (see the benchmark). Without a resize, fast_decode does nothing.
    """

    kind = "image"

    def __init__(self, spec: Mapping[str, Any], limits: TransformLimits | None = None) -> None:
        """Validates the spec; InvalidInput names the offending key (`spec.resize.size`)."""
        super().__init__(spec, limits)
        s = self.spec
        unknown = sorted(str(k) for k in s if k not in SPEC_KEYS)
        if unknown:
            raise spec_error(unknown[0], f"unknown key (known: {', '.join(sorted(SPEC_KEYS))})")

        name = s.get("input")
        if not isinstance(name, str) or not name:
            raise spec_error("input", f"must be the model input's name (a non-empty string), not {name!r}")
        self.input: str = name
        self.mode: str = _choice(s.get("mode", "RGB"), "mode", MODES)
        self.channels: int = 1 if self.mode == "L" else 3
        self.exif_transpose: bool = _flag(s.get("exif_transpose", True), "exif_transpose")
        fast = s.get("fast_decode", False)
        if not (isinstance(fast, bool) or fast == "aggressive"):
            raise spec_error("fast_decode", f"must be true, false or aggressive, not {fast!r}")
        # 0: exact decode; 1: DCT-scaled decode no smaller than the resize target; 2: one more
        # halving (the resize then upsamples: faster, less exact).
        self.draft_level: int = {False: 0, True: 1, "aggressive": 2}[fast]
        self.fast_decode: bool = self.draft_level > 0
        self.layout: str = _choice(s.get("layout", "NCHW"), "layout", LAYOUTS)
        dtype = _choice(s.get("dtype", "float32"), "dtype", tuple(DTYPES))
        self.datatype, self.dtype = DTYPES[dtype]

        self.resize: ResizeSpec | None = self._resize_spec(s["resize"]) if "resize" in s else None
        self.crop: tuple[int, int] | None = None
        if "center_crop" in s:
            self.crop = _hw(s["center_crop"], "center_crop")
        self.height, self.width = self._output_size()

        if dtype == "uint8":
            for key in ("scale", "mean", "std"):
                if key in s:
                    raise spec_error(key, "is not allowed with dtype uint8 (the output is the raw pixels)")
            self.lut: np.ndarray | None = None
            self.gain: np.ndarray | None = None
            self.offset: np.ndarray | None = None
        else:
            scale = s.get("scale", 1 / 255)
            if not _is_number(scale) or scale == 0:
                raise spec_error("scale", f"must be a finite non-zero number, not {scale!r}")
            c = self.channels
            mean = _channel_values(s["mean"], "mean", c) if "mean" in s else (0.0,) * c
            std = _channel_values(s["std"], "std", c) if "std" in s else (1.0,) * c
            if any(v == 0 for v in std):
                raise spec_error("std", f"must not contain 0: {list(std)}")
            # Per output channel: x * gain + offset (float32), or a table of all 256 results
            # computed in float64 and rounded once (float16).
            mean_, std_ = np.array(mean), np.array(std)
            self.gain = (float(scale) / std_).astype(np.float32)
            self.offset = (-mean_ / std_).astype(np.float32)
            values = np.arange(256, dtype=np.float64) * float(scale)
            with np.errstate(over="ignore"):
                self.lut = ((values[None, :] - mean_[:, None]) / std_[:, None]).astype(self.dtype)
            if not (np.all(np.isfinite(self.lut)) and np.all(np.isfinite(self.gain))):
                raise spec_error("scale", f"scale, mean and std give values out of {dtype} range")

    def _resize_spec(self, value: Any) -> ResizeSpec:
        if not isinstance(value, Mapping):
            raise spec_error("resize", f"must be a mapping with mode and size, not {value!r}")
        unknown = sorted(str(k) for k in value if k not in RESIZE_KEYS)
        if unknown:
            raise spec_error(f"resize.{unknown[0]}", f"unknown key (known: {', '.join(sorted(RESIZE_KEYS))})")
        mode = _choice(value.get("mode", "exact"), "resize.mode", RESIZE_MODES)
        if "size" not in value:
            raise spec_error("resize.size", "is required")
        size: tuple[int, int] | int
        if mode == "shorter_side":
            side = value["size"]
            if not _is_int(side) or side <= 0:
                raise spec_error("resize.size", f"must be a positive integer for shorter_side, not {side!r}")
            size = int(side)
        else:
            size = _hw(value["size"], "resize.size")
        resample = FILTERS[_choice(value.get("filter", "bilinear"), "resize.filter", tuple(FILTERS))]
        fill = value.get("fill", DEFAULT_FILL)
        if "fill" in value and mode != "letterbox":
            raise spec_error("resize.fill", "only applies to resize.mode letterbox")
        if not _is_int(fill) or not 0 <= fill <= 255:
            raise spec_error("resize.fill", f"must be an integer 0..255, not {fill!r}")
        return ResizeSpec(mode, size, resample, int(fill))

    def _output_size(self) -> tuple[int, int]:
        """The fixed (H, W) of every output image; a spec error when the spec leaves it open."""
        r = self.resize
        fixed = r.size if r is not None and isinstance(r.size, tuple) else None
        if self.crop is not None:
            if fixed is not None and (self.crop[0] > fixed[0] or self.crop[1] > fixed[1]):
                raise spec_error("center_crop", f"{list(self.crop)} is larger than resize.size {list(fixed)}")
            if r is not None and isinstance(r.size, int) and max(self.crop) > r.size:
                raise spec_error("center_crop", f"{list(self.crop)} is larger than resize.size {r.size}")
            fixed = self.crop
        if fixed is None:
            raise spec_error(
                "resize",
                "a batch needs a fixed size: use resize.mode exact or letterbox, or add center_crop",
            )
        if fixed[0] * fixed[1] > self.limits.max_image_pixels:
            raise spec_error(
                "center_crop" if self.crop is not None else "resize.size",
                f"{fixed[1]}x{fixed[0]} pixels exceed limits.max_image_pixels={self.limits.max_image_pixels}",
            )
        return fixed

    def outputs(self) -> dict[str, TensorInfo]:
        """The one tensor this transform produces, batch axis -1."""
        c, h, w = self.channels, self.height, self.width
        shape = (-1, c, h, w) if self.layout == "NCHW" else (-1, h, w, c)
        return {self.input: TensorInfo(self.datatype, shape)}

    def transform(self, items: Sequence[Any]) -> dict[str, np.ndarray]:
        """The batch tensor for encoded images, in item order; InvalidInput names `items[i]`."""
        n, c, h, w = len(items), self.channels, self.height, self.width
        pixels = np.zeros((n, h, w, c), dtype=np.uint8)
        for i, data in enumerate(items):
            try:
                self.decode_into(data, pixels[i])
            except InvalidInput as exc:
                raise item_error(i, exc) from None
        return {self.input: self.normalise(pixels)}

    def normalise(self, pixels: np.ndarray) -> np.ndarray:
        """(N, H, W, C) uint8 in RGB/L order -> the output tensor (channel order, dtype, layout)."""
        n, h, w, c = pixels.shape
        order = [2, 1, 0] if self.mode == "BGR" else list(range(c))
        if self.lut is None:
            if self.layout == "NHWC":
                return pixels[..., order] if self.mode == "BGR" else pixels
            out8 = np.empty((n, c, h, w), dtype=np.uint8)
            for dst, src in enumerate(order):
                out8[:, dst] = pixels[..., src]
            return out8
        nchw = self.layout == "NCHW"
        out = np.empty((n, c, h, w) if nchw else (n, h, w, c), dtype=self.dtype)
        if self.dtype == np.float16:
            for dst, src in enumerate(order):
                np.take(
                    self.lut[dst], pixels[..., src], out=out[:, dst] if nchw else out[..., dst], mode="clip"
                )
            return out
        assert self.gain is not None and self.offset is not None
        if nchw:
            for dst, src in enumerate(order):
                out[:, dst] = pixels[..., src]
            gain, offset = self.gain[None, :, None, None], self.offset[None, :, None, None]
        else:
            out[...] = pixels[..., order] if self.mode == "BGR" else pixels
            gain, offset = self.gain, self.offset
        np.multiply(out, gain, out=out)
        np.add(out, offset, out=out)
        return out

    def decode_into(self, data: Any, out: np.ndarray) -> None:
        """Decodes one encoded image into out (H, W, C) uint8; InvalidInput (no item prefix)."""
        if isinstance(data, bytearray | memoryview):
            data = bytes(data)
        if not isinstance(data, bytes):
            raise InvalidInput(f"expected the bytes of an encoded image, got {type(data).__name__}")
        if not data:
            raise InvalidInput("image is empty (0 bytes)")
        if len(data) > self.limits.max_image_bytes:
            limit = self.limits.max_image_bytes
            raise InvalidInput(f"{len(data)} bytes exceed limits.max_image_bytes={limit}")
        try:
            img = Image.open(io.BytesIO(data), formats=OPEN_FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            limit = self.limits.max_image_pixels
            raise InvalidInput(
                f"image pixels exceed limits.max_image_pixels={limit} ({_short(exc)})"
            ) from None
        except Exception as exc:  # Pillow raises many types on garbage; none may escape
            foreign = _foreign_format(data)
            if foreign is not None:
                raise InvalidInput(f"format {foreign} is not supported (only {FORMATS_TEXT})") from None
            detail = "no known signature" if isinstance(exc, UnidentifiedImageError) else _short(exc)
            raise InvalidInput(f"image is truncated or not a {FORMATS_TEXT} ({detail})") from None
        with img:
            self._decode_open(img, out)

    def _decode_open(self, img: Image.Image, out: np.ndarray) -> None:
        limit = self.limits.max_image_pixels
        width, height = img.size
        if width * height > limit:
            raise InvalidInput(f"{width}x{height} pixels exceed limits.max_image_pixels={limit}")
        if img.format not in ALLOWED_FORMATS:
            raise InvalidInput(f"format {img.format} is not supported (only {FORMATS_TEXT})")
        if width <= 0 or height <= 0:
            raise InvalidInput(f"image has no pixels ({width}x{height})")
        upright = (width, height)
        try:
            if self.fast_decode and img.format in ("JPEG", "MPO") and self.resize is not None:
                # JPEG EXIF sits in the header: the orientation is known before decoding.
                method = self._orientation(img)
                rotated = method in _QUARTER_TURNS
                upright = (height, width) if rotated else (width, height)
                tw, th = self._resized_size(*upright)
                if self.draft_level == 2:
                    tw, th = max(1, tw // 2), max(1, th // 2)
                img.draft("L" if self.mode == "L" else None, (th, tw) if rotated else (tw, th))
                img.load()
            else:
                img.load()  # before the orientation: PNG may keep its EXIF after the pixels
                method = self._orientation(img)
                if method in _QUARTER_TURNS:
                    upright = (height, width)
            if method is not None:
                img = img.transpose(method)
            img = to_mode(img, "L" if self.mode == "L" else "RGB")
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise InvalidInput(
                f"image pixels exceed limits.max_image_pixels={limit} ({_short(exc)})"
            ) from None
        except Exception as exc:  # truncated or corrupt data: any Pillow/codec error
            raise InvalidInput(f"image is truncated or corrupt ({_short(exc)})") from None
        self._resize_into(img, upright, out)

    def _orientation(self, img: Image.Image) -> Image.Transpose | None:
        """The transposition the EXIF orientation asks for; None when off, absent or unreadable."""
        if not self.exif_transpose:
            return None
        try:
            orientation = img.getexif().get(_ORIENTATION, 1)
        except Exception:  # corrupt EXIF: treat as no orientation rather than reject the image
            return None
        return _TRANSPOSE.get(orientation) if isinstance(orientation, int) else None

    def _resized_size(self, width: int, height: int) -> tuple[int, int]:
        """The (width, height) the resize step produces from an upright width x height image."""
        r = self.resize
        if r is None:
            return width, height
        if r.mode == "exact":
            assert isinstance(r.size, tuple)
            return r.size[1], r.size[0]
        if r.mode == "letterbox":
            assert isinstance(r.size, tuple)
            s = min(r.size[1] / width, r.size[0] / height)
            return (
                min(r.size[1], max(1, round(width * s))),
                min(r.size[0], max(1, round(height * s))),
            )
        assert isinstance(r.size, int)
        if width <= height:
            return r.size, max(1, round(height * r.size / width))
        return max(1, round(width * r.size / height)), r.size

    def _resize_into(self, img: Image.Image, upright: tuple[int, int], out: np.ndarray) -> None:
        """Resizes, pads and crops the upright image into out (H, W, C).

        The resize target comes from the upright size before any reduced (draft) decode, so
        fast_decode changes the pixels a little but never the geometry.
        """
        r = self.resize
        if r is None:
            _place_center(out, _pixels(img))
            return
        width, height = self._resized_size(*upright)
        if width * height > self.limits.max_image_pixels:
            raise InvalidInput(
                f"resized to {width}x{height} the image would exceed "
                f"limits.max_image_pixels={self.limits.max_image_pixels}"
            )
        if (width, height) != img.size:
            img = img.resize((width, height), r.resample)
        resized = _pixels(img)
        if r.mode == "letterbox":
            assert isinstance(r.size, tuple)
            canvas = out if self.crop is None else np.empty((*r.size, self.channels), dtype=np.uint8)
            canvas.fill(r.fill)
            _place_center(canvas, resized)
            if canvas is not out:
                _place_center(out, canvas)
        else:
            _place_center(out, resized)

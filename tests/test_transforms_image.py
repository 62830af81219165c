"""Unit tests of transforms.image: outputs against a straightforward Pillow + numpy reference.

Every test image is built in memory; nothing here needs a backend or a file.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageOps

from router.errors import InvalidInput
from transforms.base import TensorInfo, TransformLimits, build
from transforms.image import ImageTransform

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
FILTERS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


# --------------------------------------------------------------------------- test images


def photo(width: int, height: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    """A smooth gradient with some noise and a bright square: (H, W, C) uint8, photo-like."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    planes = [
        255 * x / max(width - 1, 1),
        255 * y / max(height - 1, 1),
        127 + 100 * np.sin(x / 7.0 + y / 11.0),
        255 * (x + y) / max(width + height - 2, 1),
    ][:channels]
    arr = np.stack(planes, axis=-1) + rng.normal(0, 12, (height, width, channels))
    arr[height // 4 : height // 2, width // 4 : width // 2] = 230
    return np.clip(arr, 0, 255).astype(np.uint8)


def encode(img: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def rgb(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    return Image.fromarray(photo(width, height, seed), "RGB")


def jpeg(width: int = 64, height: int = 48, seed: int = 0, **params: Any) -> bytes:
    return encode(rgb(width, height, seed), "JPEG", quality=90, **params)


def png_with_size(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose IHDR claims width x height (a decompression-bomb header)."""
    data = encode(Image.new("L", (1, 1)), "PNG")
    ihdr = bytearray(data[12:29])  # type + 13 bytes of IHDR data
    ihdr[4:12] = struct.pack(">II", width, height)
    crc = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    return data[:12] + bytes(ihdr) + crc + data[33:]


# --------------------------------------------------------------------------- the reference


def reference(
    data: bytes,
    *,
    mode: str = "RGB",
    size: tuple[int, int] | None = (32, 32),
    resize_mode: str = "exact",
    resize_filter: str = "bilinear",
    fill: int = 114,
    crop: tuple[int, int] | None = None,
    exif: bool = True,
    dtype: str = "float32",
    scale: float = 1 / 255,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    layout: str = "NCHW",
) -> np.ndarray:
    """One item's expected output, the plain way: decode, orient, convert, resize, normalise."""
    img: Image.Image = Image.open(io.BytesIO(data))
    img.load()
    if exif:
        img = ImageOps.exif_transpose(img)
    img = img.convert("L" if mode == "L" else "RGB")
    resample = FILTERS[resize_filter]
    if size is not None:
        h, w = size
        if resize_mode == "exact":
            img = img.resize((w, h), resample)
        elif resize_mode == "shorter_side":
            s = size[0] / min(img.size)
            img = img.resize((round(img.width * s), round(img.height * s)), resample)
        else:  # letterbox
            s = min(w / img.width, h / img.height)
            nw, nh = max(1, round(img.width * s)), max(1, round(img.height * s))
            canvas = Image.new(img.mode, (w, h), (fill,) * len(img.getbands()))
            canvas.paste(img.resize((nw, nh), resample), ((w - nw) // 2, (h - nh) // 2))
            img = canvas
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if crop is not None:
        top, left = (arr.shape[0] - crop[0]) // 2, (arr.shape[1] - crop[1]) // 2
        arr = arr[top : top + crop[0], left : left + crop[1]]
    if mode == "BGR":
        arr = arr[:, :, ::-1]
    out: np.ndarray = arr
    if dtype != "uint8":
        c = arr.shape[2]
        m = np.array(mean if mean is not None else [0.0] * c)
        sd = np.array(std if std is not None else [1.0] * c)
        out = ((arr.astype(np.float64) * scale - m) / sd).astype(dtype)
    return out.transpose(2, 0, 1) if layout == "NCHW" else out


def run(spec: dict[str, Any], items: list[bytes], limits: TransformLimits | None = None) -> np.ndarray:
    t = ImageTransform({"input": "x", **spec}, limits)
    (name, out), *rest = t.transform(items).items()
    assert name == "x" and not rest
    info = t.outputs()["x"]
    assert out.dtype == {"FP32": np.float32, "FP16": np.float16, "UINT8": np.uint8}[info.datatype]
    assert out.shape[0] == len(items) and out.shape[1:] == info.shape[1:]
    return out


def assert_matches(out: np.ndarray, ref: np.ndarray) -> None:
    assert out.shape == ref.shape and out.dtype == ref.dtype
    if out.dtype == np.uint8:
        np.testing.assert_array_equal(out, ref)
    else:
        np.testing.assert_allclose(out.astype(np.float64), ref.astype(np.float64), rtol=1e-6, atol=1e-6)


EXACT32 = {"resize": {"mode": "exact", "size": [32, 32]}}


# --------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP"])
def test_rgb_formats_float_normalised(fmt: str) -> None:
    data = encode(rgb(), fmt)
    spec = {**EXACT32, "mean": MEAN, "std": STD}
    out = run(spec, [data, data])
    ref = reference(data, mean=MEAN, std=STD)
    assert_matches(out[0], ref)
    assert_matches(out[1], ref)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_uint8_exact(layout: str) -> None:
    data = encode(rgb(), "PNG")
    out = run({**EXACT32, "dtype": "uint8", "layout": layout}, [data])
    assert_matches(out[0], reference(data, dtype="uint8", layout=layout))


def test_several_images_keep_item_order() -> None:
    items = [jpeg(seed=s) for s in range(5)]
    out = run({**EXACT32, "dtype": "uint8"}, items)
    for i, data in enumerate(items):
        assert_matches(out[i], reference(data, dtype="uint8"))


@pytest.mark.parametrize("mode", ["RGB", "L", "BGR"])
def test_grayscale_png(mode: str) -> None:
    data = encode(Image.fromarray(photo(50, 40, channels=1)[:, :, 0], "L"), "PNG")
    out = run({**EXACT32, "mode": mode}, [data])
    assert out.shape == (1, 1 if mode == "L" else 3, 32, 32)
    assert_matches(out[0], reference(data, mode=mode))
    if mode != "L":
        np.testing.assert_array_equal(out[0, 0], out[0, 1])


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_color_jpeg_into_l(mode: str) -> None:
    data = jpeg()
    assert_matches(
        run({**EXACT32, "mode": mode, "dtype": "uint8"}, [data])[0], reference(data, mode=mode, dtype="uint8")
    )


@pytest.mark.parametrize("pil_mode", ["RGBA", "LA"])
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_alpha_is_dropped(pil_mode: str, mode: str) -> None:
    arr = photo(40, 30, channels=4 if pil_mode == "RGBA" else 2, seed=3)
    data = encode(Image.fromarray(arr, pil_mode), "PNG")
    out = run({**EXACT32, "mode": mode, "dtype": "uint8"}, [data])
    assert_matches(out[0], reference(data, mode=mode, dtype="uint8"))
    # dropped, not composited: the colour channels are the stored ones
    plain = encode(Image.fromarray(arr, pil_mode).convert("RGB" if pil_mode == "RGBA" else "L"), "PNG")
    np.testing.assert_array_equal(out, run({**EXACT32, "mode": mode, "dtype": "uint8"}, [plain]))


def test_palette_png_with_transparency() -> None:
    img = rgb(40, 30).quantize(16)
    img.info["transparency"] = 0
    data = encode(img, "PNG", transparency=0)
    assert Image.open(io.BytesIO(data)).mode == "P"
    assert_matches(run(EXACT32, [data])[0], reference(data))


def test_gif_first_frame() -> None:
    frames = [rgb(40, 30, seed=1).quantize(64), Image.new("RGB", (40, 30), (255, 0, 0)).quantize(4)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    out = run({**EXACT32, "dtype": "uint8"}, [data])
    assert_matches(out[0], reference(data, dtype="uint8"))
    assert out[0, 1].max() > 0  # not the solid red second frame


def test_sixteen_bit_png_is_rescaled() -> None:
    wide = (photo(40, 30, channels=1)[:, :, 0].astype(np.uint16) * 257 + 100).astype(np.uint16)
    data = encode(Image.fromarray(wide), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = run({"mode": "L", "dtype": "uint8", "center_crop": [30, 40]}, [data])
    expected = ((wide.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)
    np.testing.assert_array_equal(out[0, 0], expected)


def test_cmyk_jpeg() -> None:
    data = encode(rgb().convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    assert_matches(run({**EXACT32, "dtype": "uint8"}, [data])[0], reference(data, dtype="uint8"))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_exif_orientation_6(fmt: str, layout: str) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    img = rgb(64, 32)  # landscape stored, portrait shown
    data = encode(img, fmt, exif=exif, **({"quality": 95} if fmt != "PNG" else {}))
    spec = {"resize": {"mode": "exact", "size": [40, 20]}, "dtype": "uint8", "layout": layout}
    out = run(spec, [data])
    plain = Image.open(io.BytesIO(data)).convert("RGB")
    upright = plain.transpose(Image.Transpose.ROTATE_270).resize((20, 40), Image.Resampling.BILINEAR)
    expected = np.asarray(upright)
    assert_matches(out[0], expected.transpose(2, 0, 1) if layout == "NCHW" else expected)
    assert_matches(out[0], reference(data, size=(40, 20), dtype="uint8", layout=layout))
    # and off when asked
    off = run({**spec, "exif_transpose": False}, [data])
    assert_matches(off[0], reference(data, size=(40, 20), dtype="uint8", layout=layout, exif=False))
    assert not np.array_equal(off, out)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_corrupt_exif_is_ignored() -> None:
    data = jpeg()
    segment = b"Exif\x00\x00II*\x00\xff\xff\xff\x7f" + b"\x13" * 40  # IFD offset far past the end
    bad = data[:2] + b"\xff\xe1" + struct.pack(">H", len(segment) + 2) + segment + data[2:]
    for fast in (False, True):
        spec = {**EXACT32, "dtype": "uint8", "fast_decode": fast}
        np.testing.assert_array_equal(run(spec, [bad]), run(spec, [data]))


@pytest.mark.parametrize("exif_mode", ["exact", "letterbox"])
def test_exif_orientation_geometry_with_letterbox(exif_mode: str) -> None:
    exif = Image.Exif()
    exif[0x0112] = 8
    data = encode(rgb(60, 20), "JPEG", quality=95, exif=exif)
    spec = {"resize": {"mode": exif_mode, "size": [30, 30]}, "dtype": "uint8"}
    assert_matches(run(spec, [data])[0], reference(data, size=(30, 30), resize_mode=exif_mode, dtype="uint8"))


@pytest.mark.parametrize(("width", "height"), [(1, 1), (4000, 3), (3, 4000)])
def test_extreme_sizes(width: int, height: int) -> None:
    data = encode(rgb(width, height), "PNG")
    for spec_mode in ("exact", "letterbox"):
        spec = {"resize": {"mode": spec_mode, "size": [24, 32]}, "mean": MEAN, "std": STD}
        out = run(spec, [data])
        assert_matches(out[0], reference(data, size=(24, 32), resize_mode=spec_mode, mean=MEAN, std=STD))


def test_bgr_is_rgb_reversed() -> None:
    data = jpeg()
    out_rgb = run({**EXACT32, "mean": MEAN, "std": STD}, [data])
    out_bgr = run({**EXACT32, "mode": "BGR", "mean": MEAN[::-1], "std": STD[::-1]}, [data])
    np.testing.assert_array_equal(out_bgr, out_rgb[:, ::-1])
    assert_matches(out_bgr[0], reference(data, mode="BGR", mean=MEAN[::-1], std=STD[::-1]))
    nhwc = run({**EXACT32, "mode": "BGR", "dtype": "uint8", "layout": "NHWC"}, [data])
    assert_matches(nhwc[0], reference(data, mode="BGR", dtype="uint8", layout="NHWC"))


def test_nhwc_is_nchw_transposed() -> None:
    items = [jpeg(seed=1), jpeg(seed=2)]
    nchw = run({**EXACT32, "mean": MEAN, "std": STD}, items)
    nhwc = run({**EXACT32, "mean": MEAN, "std": STD, "layout": "NHWC"}, items)
    np.testing.assert_array_equal(nhwc, nchw.transpose(0, 2, 3, 1))


def test_letterbox_padding() -> None:
    data = encode(rgb(40, 20), "PNG")  # 2:1 into 32x32: content 32x16 at rows 8..23
    spec = {"resize": {"mode": "letterbox", "size": [32, 32], "fill": 7}}
    out = run({**spec, "dtype": "uint8"}, [data])[0]
    assert_matches(out, reference(data, resize_mode="letterbox", fill=7, dtype="uint8"))
    assert (out[:, :8] == 7).all() and (out[:, 24:] == 7).all()
    expected = np.asarray(Image.open(io.BytesIO(data)).resize((32, 16), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(out[:, 8:24].transpose(1, 2, 0), expected)
    floats = run({**spec, "mean": MEAN, "std": STD}, [data])[0]
    for c in range(3):
        assert floats[c, 0, 0] == pytest.approx((7 / 255 - MEAN[c]) / STD[c], abs=1e-6)
    default = run({"resize": {"mode": "letterbox", "size": [32, 32]}, "dtype": "uint8"}, [data])[0]
    assert (default[:, 0] == 114).all()


def test_letterbox_then_center_crop() -> None:
    data = encode(rgb(40, 20), "PNG")
    spec = {"resize": {"mode": "letterbox", "size": [32, 32]}, "center_crop": [20, 28], "dtype": "uint8"}
    out = run(spec, [data])[0]
    assert_matches(out, reference(data, resize_mode="letterbox", crop=(20, 28), dtype="uint8"))


@pytest.mark.parametrize("resize_filter", ["bilinear", "bicubic", "nearest", "lanczos"])
def test_shorter_side_and_center_crop(resize_filter: str) -> None:
    data = jpeg(64, 48)
    spec = {
        "resize": {"mode": "shorter_side", "size": 40, "filter": resize_filter},
        "center_crop": [32, 36],
        "mean": MEAN,
        "std": STD,
    }
    out = run(spec, [data])
    ref = reference(
        data,
        size=(40, 40),
        resize_mode="shorter_side",
        resize_filter=resize_filter,
        crop=(32, 36),
        mean=MEAN,
        std=STD,
    )
    assert out.shape == (1, 3, 32, 36)
    assert_matches(out[0], ref)


def test_center_crop_without_resize_and_padding() -> None:
    data = encode(rgb(40, 30), "PNG")
    out = run({"center_crop": [20, 24], "dtype": "uint8"}, [data])[0]
    assert_matches(out, reference(data, size=None, crop=(20, 24), dtype="uint8"))
    small = encode(rgb(10, 6), "PNG")  # smaller than the crop: centred on zeros
    padded = run({"center_crop": [10, 14], "dtype": "uint8", "layout": "NHWC"}, [small])[0]
    np.testing.assert_array_equal(padded[2:8, 2:12], np.asarray(Image.open(io.BytesIO(small))))
    assert padded[:2].max() == 0 and padded[:, :2].max() == 0


def test_float16_output() -> None:
    data = jpeg()
    out = run({**EXACT32, "dtype": "float16", "mean": MEAN, "std": STD}, [data])
    assert out.dtype == np.float16
    assert_matches(out[0], reference(data, dtype="float16", mean=MEAN, std=STD))


def test_scale_only() -> None:
    data = jpeg()
    out = run({**EXACT32, "scale": 2.0, "mean": [1, 2, 3]}, [data])
    assert_matches(out[0], reference(data, scale=2.0, mean=[1, 2, 3]))


def test_outputs_and_registry() -> None:
    t = build({"kind": "image", "input": "images", **EXACT32, "layout": "NHWC", "dtype": "float16"})
    assert isinstance(t, ImageTransform)
    assert t.outputs() == {"images": TensorInfo("FP16", (-1, 32, 32, 3))}
    gray = ImageTransform({"input": "g", "mode": "L", "center_crop": [8, 9], "dtype": "uint8"})
    assert gray.outputs() == {"g": TensorInfo("UINT8", (-1, 1, 8, 9))}
    assert gray.transform([])["g"].shape == (0, 1, 8, 9)


def test_fast_decode_accuracy() -> None:
    data = encode(Image.fromarray(photo(640, 480, seed=7)), "JPEG", quality=90)
    spec = {"resize": {"mode": "exact", "size": [224, 224]}}
    exact = run(spec, [data])
    fast = run({**spec, "fast_decode": True}, [data])
    assert fast.shape == exact.shape == (1, 3, 224, 224)
    mad = float(np.abs(fast - exact).mean())
    assert mad < 0.01, mad  # measured 0.0042 on this image ([0, 1] scale, no mean/std)
    assert not np.array_equal(fast, exact)  # it did decode at reduced size
    aggressive = run({**spec, "fast_decode": "aggressive"}, [data])
    assert aggressive.shape == exact.shape
    mad2 = float(np.abs(aggressive - exact).mean())
    assert mad < mad2 < 0.02, (mad, mad2)  # less exact than true, still close (measured 0.0088)


def test_fast_decode_keeps_geometry() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.fromarray(photo(640, 320, seed=2)), "JPEG", quality=90, exif=exif)
    for spec in (
        {"resize": {"mode": "letterbox", "size": [100, 100]}},
        {"resize": {"mode": "shorter_side", "size": 90}, "center_crop": [80, 80]},
        {"resize": {"mode": "exact", "size": [120, 50]}, "mode": "L"},
    ):
        exact = run(spec, [data])
        for level in (True, "aggressive"):
            fast = run({**spec, "fast_decode": level}, [data])
            assert fast.shape == exact.shape
            assert float(np.abs(fast - exact).mean()) < 0.03
    png = encode(rgb(), "PNG")  # no effect on other formats
    np.testing.assert_array_equal(run({**EXACT32, "fast_decode": True}, [png]), run(EXACT32, [png]))


# --------------------------------------------------------------------------- item errors


def item_message(
    items: list[Any], spec: dict[str, Any] | None = None, limits: TransformLimits | None = None
) -> str:
    t = ImageTransform({"input": "x", **(spec or EXACT32)}, limits)
    with pytest.raises(InvalidInput) as info:
        t.transform(items)
    return info.value.message


def test_truncated_jpeg() -> None:
    data = jpeg(64, 48)
    msg = item_message([data, data[: len(data) // 2]])
    assert msg.startswith("items[1]: image is truncated"), msg


@pytest.mark.parametrize(
    ("bad", "rule"),
    [
        (np.random.default_rng(1).bytes(5000), "image is truncated or not a JPEG/PNG/WebP/BMP/GIF"),
        (b"", "image is empty"),
        ("not bytes", "expected the bytes of an encoded image, got str"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "format PDF is not supported"),
        (encode(rgb(), "TIFF"), "format TIFF is not supported"),
        (jpeg()[:200], "image is truncated"),
    ],
)
def test_bad_items(bad: Any, rule: str) -> None:
    good = jpeg()
    msg = item_message([good, good, bad])
    assert msg.startswith(f"items[2]: {rule}"), msg
    assert item_message([bad]).startswith(f"items[0]: {rule}")


def test_oversize_bytes() -> None:
    data = jpeg()
    msg = item_message([data], limits=TransformLimits(max_image_bytes=len(data) - 1))
    assert msg == f"items[0]: {len(data)} bytes exceed limits.max_image_bytes={len(data) - 1}"
    run(EXACT32, [data], TransformLimits(max_image_bytes=len(data)))


def test_pixel_limit_checked_before_decoding() -> None:
    # only a 1x1 image's worth of data: any decode attempt would fail differently
    msg = item_message([png_with_size(3000, 3000)], limits=TransformLimits(max_image_pixels=1_000_000))
    assert msg == "items[0]: 3000x3000 pixels exceed limits.max_image_pixels=1000000"
    real = encode(rgb(200, 100), "PNG")
    msg = item_message([jpeg(), real], limits=TransformLimits(max_image_pixels=10_000))
    assert msg == "items[1]: 200x100 pixels exceed limits.max_image_pixels=10000"


def test_decompression_bomb_header() -> None:
    msg = item_message([png_with_size(100_000, 100_000)])  # beyond Pillow's own error limit
    assert msg.startswith("items[0]: image pixels exceed limits.max_image_pixels="), msg
    with warnings.catch_warnings():  # Pillow's warning band, turned into errors by the caller
        warnings.simplefilter("error")
        msg = item_message([png_with_size(10_000, 10_000)], limits=TransformLimits(max_image_pixels=10**9))
    assert msg.startswith("items[0]: image pixels exceed"), msg
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        msg = item_message([png_with_size(10_000, 10_000)])  # our limit, default 40M
    assert msg == "items[0]: 10000x10000 pixels exceed limits.max_image_pixels=40000000"


def test_shorter_side_of_a_very_long_image_is_bounded() -> None:
    data = encode(rgb(4000, 3), "PNG")
    spec = {"resize": {"mode": "shorter_side", "size": 64}, "center_crop": [64, 64]}
    msg = item_message([data], spec, TransformLimits(max_image_pixels=1_000_000))
    assert msg.startswith("items[0]: resized to 85333x64 the image would exceed limits.max_image_pixels"), msg


def test_bad_item_does_not_poison_the_transform() -> None:
    t = ImageTransform({"input": "x", **EXACT32, "dtype": "uint8"})
    good = jpeg()
    with pytest.raises(InvalidInput):
        t.transform([good, b"junk"])
    np.testing.assert_array_equal(t.transform([good])["x"][0], reference(good, dtype="uint8"))


# --------------------------------------------------------------------------- spec errors


@pytest.mark.parametrize(
    ("spec", "key"),
    [
        ({**EXACT32, "colour": "RGB"}, "spec.colour: unknown key"),
        ({**EXACT32, "mode": "RGBA"}, "spec.mode: 'RGBA' is not one of RGB, BGR, L"),
        ({**EXACT32, "mean": [0.5, 0.5]}, "spec.mean: has 2 values but the output has 3 channel(s)"),
        ({**EXACT32, "mode": "L", "std": [0.2, 0.2, 0.2]}, "spec.std: has 3 values"),
        ({**EXACT32, "std": [0.2, 0, 0.2]}, "spec.std: must not contain 0"),
        ({**EXACT32, "mean": "0.5"}, "spec.mean: must be a list of 3 numbers"),
        ({**EXACT32, "dtype": "uint8", "scale": 1.0}, "spec.scale: is not allowed with dtype uint8"),
        ({**EXACT32, "dtype": "uint8", "mean": MEAN}, "spec.mean: is not allowed with dtype uint8"),
        ({**EXACT32, "dtype": "int8"}, "spec.dtype:"),
        ({**EXACT32, "layout": "CHW"}, "spec.layout:"),
        ({**EXACT32, "scale": True}, "spec.scale:"),
        ({**EXACT32, "exif_transpose": "yes"}, "spec.exif_transpose: must be true or false"),
        ({**EXACT32, "fast_decode": 1}, "spec.fast_decode: must be true, false or aggressive"),
        ({"resize": {"mode": "shorter_side", "size": 256}}, "spec.resize: a batch needs a fixed size"),
        ({}, "spec.resize: a batch needs a fixed size"),
        ({"resize": {"mode": "stretch", "size": [1, 1]}}, "spec.resize.mode:"),
        ({"resize": {"mode": "exact", "size": 224}}, "spec.resize.size: must be [height, width]"),
        ({"resize": {"mode": "exact", "size": [224, 0]}}, "spec.resize.size: must be [height, width]"),
        (
            {"resize": {"mode": "shorter_side", "size": [224, 224]}},
            "spec.resize.size: must be a positive integer",
        ),
        ({"resize": {"mode": "exact"}}, "spec.resize.size: is required"),
        ({"resize": {"size": [4, 4], "interp": "x"}}, "spec.resize.interp: unknown key"),
        ({"resize": {"size": [4, 4], "filter": "box"}}, "spec.resize.filter:"),
        ({"resize": {"size": [4, 4], "fill": 3}}, "spec.resize.fill: only applies to resize.mode letterbox"),
        (
            {"resize": {"mode": "letterbox", "size": [4, 4], "fill": 256}},
            "spec.resize.fill: must be an integer",
        ),
        ({"resize": [224, 224]}, "spec.resize: must be a mapping"),
        (
            {**EXACT32, "center_crop": [64, 8]},
            "spec.center_crop: [64, 8] is larger than resize.size [32, 32]",
        ),
        ({"resize": {"mode": "shorter_side", "size": 8}, "center_crop": [9, 8]}, "spec.center_crop:"),
        ({"center_crop": [1, 2, 3]}, "spec.center_crop: must be [height, width]"),
        ({"resize": {"size": [10_000, 10_000]}}, "spec.resize.size: 10000x10000 pixels exceed"),
    ],
)
def test_spec_errors(spec: dict[str, Any], key: str) -> None:
    with pytest.raises(InvalidInput) as info:
        ImageTransform({"input": "x", **spec})
    assert info.value.message.startswith(key), info.value.message


@pytest.mark.parametrize("name", [None, "", 3])
def test_input_name_required(name: Any) -> None:
    spec: dict[str, Any] = dict(EXACT32)
    if name is not None:
        spec["input"] = name
    with pytest.raises(InvalidInput, match=r"^spec\.input: "):
        ImageTransform(spec)

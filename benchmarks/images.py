"""Image transform benchmark: a plain per-image Pillow + numpy pipeline vs transforms.image.

Builds N synthetic but photo-like 640x480 JPEGs in memory (smooth gradients, soft blobs,
shapes and sensor-like noise, quality 90), then in one single-core run measures:

    (a) baseline: per image, Pillow decode -> convert RGB -> resize 224x224 bilinear -> numpy
        float32 / 255, (x - mean) / std, NCHW; the per-image tensors stacked per batch
    (b) ImageTransform, exact path, batches of 32
    (c) ImageTransform with fast_decode (JPEG DCT-scaled decoding), batches of 32
    (d) the same with fast_decode: aggressive (one more halving, then upsampling)

and reports images/s per core, the ratio to (a), and how far (b) and (c) are from (a) on the
normalised tensor (mean and max absolute difference, fraction of values off by > 0.05).
Markdown table on stdout, progress on stderr.

    python -m benchmarks.images [--images 200] [--repeat 7] [--batch 32]
"""

from __future__ import annotations

import os

# One core: keep any numpy/BLAS thread pools to one thread (set before numpy is imported).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import io  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402

import numpy as np  # noqa: E402
import PIL  # noqa: E402
from PIL import Image, ImageDraw, ImageFilter, features  # noqa: E402

from transforms.image import ImageTransform  # noqa: E402

WIDTH, HEIGHT = 640, 480
SIZE = 224
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
SPEC = {
    "input": "INPUT__0",
    "resize": {"mode": "exact", "size": [SIZE, SIZE], "filter": "bilinear"},
    "mean": MEAN.tolist(),
    "std": STD.tolist(),
    "dtype": "float32",
    "layout": "NCHW",
}


def log(msg: str) -> None:
    """Progress line to stderr."""
    print(f"[images {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def photo_like(seed: int, width: int = WIDTH, height: int = HEIGHT) -> Image.Image:
    """A synthetic RGB image with the statistics of a photo: smooth areas, edges, texture, noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.empty((height, width, 3), dtype=np.float32)
    for c in range(3):  # a random smooth gradient plus a few soft blobs per channel
        angle = rng.uniform(0, 2 * np.pi)
        plane = 128 + 90 * ((x / width - 0.5) * np.cos(angle) + (y / height - 0.5) * np.sin(angle))
        for _ in range(4):
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            r = rng.uniform(40, 200)
            plane += rng.uniform(-80, 80) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
        base[:, :, c] = plane
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(12):  # shapes give hard edges
        x0, y0 = int(rng.integers(0, width - 20)), int(rng.integers(0, height - 20))
        x1, y1 = x0 + int(rng.integers(10, 200)), y0 + int(rng.integers(10, 160))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=colour, outline=(0, 0, 0), width=2)
    img = img.filter(ImageFilter.GaussianBlur(0.8))  # optics
    arr = np.asarray(img).astype(np.float32) + rng.normal(0, 12, (height, width, 3)).astype(np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def make_jpegs(n: int, quality: int = 90) -> list[bytes]:
    """N distinct photo-like 640x480 JPEGs."""
    out = []
    for i in range(n):
        buf = io.BytesIO()
        photo_like(i).save(buf, "JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


def baseline_one(data: bytes) -> np.ndarray:
    """The straightforward pipeline for one image: (3, 224, 224) float32."""
    img = Image.open(io.BytesIO(data)).convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def batches(items: Sequence[bytes], size: int) -> list[Sequence[bytes]]:
    """Items cut into consecutive batches."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def run_baseline(items: Sequence[bytes], batch: int) -> np.ndarray:
    """(a): one image at a time, stacked per batch as a caller would send them."""
    return np.concatenate([np.stack([baseline_one(d) for d in b]) for b in batches(items, batch)])


def run_transform(t: ImageTransform, items: Sequence[bytes], batch: int) -> np.ndarray:
    """(b)/(c): the transform on batches."""
    return np.concatenate([t.transform(b)[t.input] for b in batches(items, batch)])


def pin_one_core() -> str:
    """Pins this process to one CPU when the OS allows it; says which."""
    try:
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return f"pinned to CPU {cpu}"
    except (AttributeError, OSError):
        return "not pinned"


def cpu_name() -> str:
    """The CPU model, as far as /proc/cpuinfo says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: Sequence[str] | None = None) -> int:
    """Builds the images, times the three paths interleaved, prints the Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="number of JPEGs (default 200)")
    parser.add_argument("--repeat", type=int, default=7, help="timed passes; per batch the best is kept")
    parser.add_argument("--batch", type=int, default=32, help="batch size of the transform paths")
    args = parser.parse_args(argv)
    if args.images < 1 or args.repeat < 1 or args.batch < 1:
        parser.error("--images, --repeat and --batch must be positive")

    pinned = pin_one_core()
    log(f"building {args.images} photo-like {WIDTH}x{HEIGHT} JPEGs ({pinned})")
    items = make_jpegs(args.images)
    kib = [len(d) / 1024 for d in items]
    log(f"JPEG sizes: mean {np.mean(kib):.0f} KiB, min {min(kib):.0f}, max {max(kib):.0f}")

    exact = ImageTransform(SPEC)
    fast = ImageTransform({**SPEC, "fast_decode": True})
    faster = ImageTransform({**SPEC, "fast_decode": "aggressive"})
    paths: dict[str, Callable[[Sequence[bytes]], np.ndarray]] = {
        "(a) baseline, per image": lambda b: run_baseline(b, args.batch),
        f"(b) ImageTransform exact, batch {args.batch}": lambda b: run_transform(exact, b, args.batch),
        f"(c) ImageTransform fast_decode, batch {args.batch}": lambda b: run_transform(fast, b, args.batch),
        f"(d) ImageTransform fast_decode aggressive, batch {args.batch}": (
            lambda b: run_transform(faster, b, args.batch)
        ),
    }
    outputs = {name: fn(items) for name, fn in paths.items()}  # warm-up, and the tensors compared
    # Per batch and path, the fastest of the passes; a path's time is the sum over batches. A
    # disturbance (another process on the core) then spoils one batch of one pass, not a whole
    # pass, and the passes interleave the paths batch by batch, so drift hits all alike.
    chunks = batches(items, args.batch)
    best = {name: [float("inf")] * len(chunks) for name in paths}
    for r in range(args.repeat):
        for i, chunk in enumerate(chunks):
            for name, fn in paths.items():
                start = time.perf_counter()
                fn(chunk)
                best[name][i] = min(best[name][i], time.perf_counter() - start)
        log(f"pass {r + 1}/{args.repeat}: " + ", ".join(f"{args.images / sum(best[n]):.0f}/s" for n in paths))

    names = list(paths)
    ref = outputs[names[0]]
    base_rate = args.images / sum(best[names[0]])
    print(
        f"Image transform, {args.images} JPEGs {WIDTH}x{HEIGHT} q90 (mean {np.mean(kib):.0f} KiB) -> "
        f"{SIZE}x{SIZE} bilinear, float32 NCHW mean/std; best of {args.repeat} per batch, "
        f"one core ({pinned}); "
        f"{cpu_name()}, Python {platform.python_version()}, Pillow {PIL.__version__} "
        f"(libjpeg-turbo {features.version('libjpeg_turbo') or '?'}), numpy {np.__version__}"
    )
    print()
    print("| path | images/s per core | vs baseline | mean abs diff vs (a) | max abs diff vs (a) | > 0.05 |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in names:
        rate = args.images / sum(best[name])
        diff = np.abs(outputs[name].astype(np.float64) - ref)
        print(
            f"| {name} | {rate:.1f} | {rate / base_rate:.2f}x | {diff.mean():.2e} | {diff.max():.2e} "
            f"| {(diff > 0.05).mean():.2%} |"
        )
    print()
    steps = []
    for label, name in (("(c)", names[2]), ("(d)", names[3])):
        pixel = np.abs(outputs[name].astype(np.float64) - ref) * STD[None, :, None, None] * 255
        steps.append(
            f"{label} is off by {pixel.mean():.2f} on average, {np.mean(pixel > 2):.2%} of "
            "values by more than 2"
        )
    print(
        "Differences are on the normalised tensor ((x/255 - mean) / std: one 8-bit step is about 0.017). "
        f"In 8-bit pixel steps, {'; '.join(steps)}."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

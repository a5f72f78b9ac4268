"""Preprocessing: official parity (goldens), every input kind, rendering, and friendly errors."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from sketchfind.config import PreprocessConfig
from sketchfind.errors import EmptySketchError, InputError, NotAPhotoError, SketchfindError
from sketchfind.preprocess import (
    MAX_PIXELS,
    PHOTO_SUFFIXES,
    RASTER_FORMATS,
    SKETCH_SUFFIXES,
    ink_mask,
    photo_array,
    preprocess_photo,
    preprocess_sketch,
    raster_format,
    read_photo,
    read_sketch_rgb,
    render_strokes,
    render_svg,
    sketch_array,
    sketch_steps,
    to_tensor,
)

SHARED = Path(__file__).parents[2] / "shared"
REFERENCE = SHARED / "reference" / "zse-sbir"
SKETCHY = SHARED / "data" / "sketchy-mini"
CFG = PreprocessConfig()


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(REFERENCE / "preprocess.npz") as data:
        return dict(data)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG with a valid header of the given size and no pixel data (cheap 'huge' image)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def draw_strokes(mode: str, background: tuple) -> Image.Image:
    image = Image.new(mode, (200, 150), background)
    draw = ImageDraw.Draw(image)
    ink = (0, 0, 0, 255)[: len(mode)]
    draw.line([(20, 30), (180, 40), (100, 130)], fill=ink, width=4)
    draw.ellipse([60, 50, 90, 80], outline=ink, width=2)
    return image


# ----------------------------------------------------------------------------- official parity


@pytest.mark.parametrize("name", ["sketch_a", "sketch_b"])
def test_sketch_intermediates_match_official_exactly(golden, name):
    rgb = read_sketch_rgb(REFERENCE / f"{name}.png")
    assert rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, golden[f"{name}_decoded_rgb"])
    steps = sketch_steps(rgb, CFG)
    for step in ("cropped", "resized", "squared"):
        assert steps[step].dtype == np.uint8
        np.testing.assert_array_equal(steps[step], golden[f"{name}_{step}"], err_msg=step)


@pytest.mark.parametrize("name", ["sketch_a", "sketch_b", "photo_a", "photo_b"])
def test_tensors_match_official(golden, name):
    fn = preprocess_sketch if name.startswith("sketch") else preprocess_photo
    tensor = fn(REFERENCE / f"{name}.png", CFG)
    assert tensor.dtype == torch.float32 and tensor.shape == (3, 224, 224)
    assert np.abs(tensor.numpy() - golden[name]).max() <= 1e-6


@pytest.mark.parametrize("name", ["sketch_b", "photo_a"])
def test_every_source_kind_gives_the_same_tensor(name):
    fn = preprocess_sketch if name.startswith("sketch") else preprocess_photo
    path = REFERENCE / f"{name}.png"
    data = path.read_bytes()
    expected = fn(path, CFG)
    for source in (str(path), data, io.BytesIO(data), Image.open(path), np.asarray(Image.open(path))):
        assert torch.equal(fn(source, CFG), expected), type(source)


@pytest.mark.parametrize(("fmt", "options"), [("BMP", {}), ("WEBP", {"lossless": True}), ("JPEG", {"quality": 100})])
def test_other_raster_formats(fmt, options):
    image = draw_strokes("RGB", (255, 255, 255))
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    expected = preprocess_sketch(png_bytes(image), CFG)
    tensor = preprocess_sketch(buffer.getvalue(), CFG)
    assert (tensor - expected).abs().max() <= (0.1 if fmt == "JPEG" else 0)  # JPEG is lossy
    assert preprocess_photo(buffer.getvalue(), CFG).shape == (3, 224, 224)


def test_to_tensor_normalises_with_config():
    arr = np.array([[[0, 255, 51]]], dtype=np.uint8)
    cfg = PreprocessConfig(mean=(0.0, 0.5, 0.2), std=(1.0, 0.5, 0.1))
    np.testing.assert_allclose(to_tensor(arr, cfg)[:, 0, 0].numpy(), [0.0, 1.0, 0.0], atol=1e-6)


def test_image_size_comes_from_config():
    cfg = PreprocessConfig(image_size=64)
    assert preprocess_sketch(REFERENCE / "sketch_a.png", cfg).shape == (3, 64, 64)
    assert preprocess_photo(REFERENCE / "photo_b.png", cfg).shape == (3, 64, 64)
    assert sketch_array(REFERENCE / "sketch_b.png", cfg).shape == (64, 64, 3)


# ----------------------------------------------------------------------------- real data


def test_sketchy_mini_files_go_through():
    classes = ["airplane", "apple"]
    for cls in classes:
        for path in sorted((SKETCHY / "sketches" / cls).glob("*.png"))[:2]:
            tensor = preprocess_sketch(path, CFG)
            assert tensor.shape == (3, 224, 224) and tensor.min() < 0 and tensor.max() <= 1
        for path in sorted((SKETCHY / "photos" / cls).glob("*.jpg"))[:2]:
            tensor = preprocess_photo(path, CFG)
            assert tensor.shape == (3, 224, 224) and torch.isfinite(tensor).all()
            assert -1 <= tensor.min() and tensor.max() <= 1


def test_photo_array_is_the_photo_pipeline_before_normalising():
    photos = [REFERENCE / "photo_a.png", *sorted((SKETCHY / "photos" / "airplane").glob("*.jpg"))[:3]]
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (CFG.mean, CFG.std))
    for path in photos:
        array = photo_array(path, CFG)
        assert array.dtype == np.uint8 and array.shape == (224, 224, 3)
        tensor = preprocess_photo(path, CFG)
        assert torch.equal(to_tensor(array, CFG), tensor)
        undone = tensor.mul(std).add(mean).mul(255).round().byte().permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(array, undone)


def test_large_photos_are_decoded_reduced_and_look_the_same():
    # a camera-sized JPEG (a real photo enlarged to 3200 x 2400): decoded at a DCT scale of at least twice the
    # model's side, then resized as usual; the result is within a few grey levels of the full decode
    real = Image.open(sorted((SKETCHY / "photos" / "cup").glob("*.jpg"))[0]).convert("RGB")
    buffer = io.BytesIO()
    real.resize((3200, 2400), Image.BICUBIC).save(buffer, format="JPEG", quality=92)
    data = buffer.getvalue()
    full = np.array(read_photo(data).resize((224, 224)).convert("RGB")).astype(int)
    reduced = photo_array(data, CFG).astype(int)
    assert read_photo(data, max_side=448).size == (800, 600)  # a quarter-scale decode: both sides >= 448
    assert np.abs(reduced - full).max() <= 8 and np.abs(reduced - full).mean() < 1.0
    # below twice the model's side nothing changes: a 400 px photo is decoded whole, bit for bit as before
    buffer = io.BytesIO()
    real.resize((400, 400), Image.BICUBIC).save(buffer, format="JPEG", quality=92)
    small = buffer.getvalue()
    np.testing.assert_array_equal(
        photo_array(small, CFG), np.array(read_photo(small).resize((224, 224)).convert("RGB"))
    )


def test_ink_mask_on_a_real_sketch_bounds_the_crop():
    path = sorted((SKETCHY / "sketches" / "airplane").glob("*.png"))[0]
    rgb = read_sketch_rgb(path)
    mask = ink_mask(rgb, CFG)
    assert mask.dtype == bool and mask.shape == rgb.shape[:2]
    np.testing.assert_array_equal(mask, rgb.astype(int).sum(axis=2) <= 300)
    assert 0 < mask.mean() < 0.5  # strokes on white paper
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    margin = CFG.sketch_margin
    height = min(mask.shape[0], rows[-1] + margin) - max(0, rows[0] - margin)
    width = min(mask.shape[1], cols[-1] + margin) - max(0, cols[0] - margin)
    assert sketch_steps(rgb, CFG)["cropped"].shape == (height, width, 3)
    stricter = ink_mask(rgb, PreprocessConfig(ink_threshold=100))
    assert stricter.sum() < mask.sum() and not (stricter & ~mask).any()


def test_raster_format_on_real_files():
    jpeg = next((SKETCHY / "photos" / "airplane").glob("*.jpg")).read_bytes()
    png = next((SKETCHY / "sketches" / "airplane").glob("*.png")).read_bytes()
    assert raster_format(jpeg) == "JPEG" and raster_format(png) == "PNG"
    assert RASTER_FORMATS["JPEG"].extension == ".jpg" and RASTER_FORMATS["JPEG"].media_type == "image/jpeg"
    assert RASTER_FORMATS["PNG"].extension == ".png" and RASTER_FORMATS["PNG"].media_type == "image/png"
    for fmt in ("WEBP", "BMP"):
        buffer = io.BytesIO()
        Image.open(io.BytesIO(png)).save(buffer, fmt)
        assert raster_format(buffer.getvalue()) == fmt
    assert raster_format(b"<svg xmlns='http://www.w3.org/2000/svg'/>") is None
    assert raster_format(b"RIFF\0\0\0\0WAVE") is None and raster_format(b"") is None


def test_suffix_lists():
    assert set(PHOTO_SUFFIXES) == {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
    assert set(SKETCH_SUFFIXES) == set(PHOTO_SUFFIXES) | {".svg", ".json", ".ndjson"}
    assert {fmt.extension for fmt in RASTER_FORMATS.values()} <= set(PHOTO_SUFFIXES)


# ----------------------------------------------------------------------------- transparency, orientation


def test_alpha_compositing_is_exact_for_every_value_and_alpha():
    values = np.arange(256, dtype=np.uint32)
    level, alpha = np.meshgrid(values, values, indexing="ij")
    expected = ((level * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)  # on white, rounded
    rgba = np.stack([level, level, level, alpha], axis=2).astype(np.uint8)
    for source in (rgba, png_bytes(Image.fromarray(rgba, "RGBA"))):
        np.testing.assert_array_equal(read_sketch_rgb(source), np.repeat(expected[:, :, None], 3, axis=2))


def test_an_opaque_canvas_reads_as_its_colours():  # the page's canvas: RGBA with alpha 255 everywhere
    rgb = np.random.default_rng(0).integers(0, 256, (64, 48, 3), dtype=np.uint8)
    rgba = np.dstack([rgb, np.full((64, 48), 255, np.uint8)])
    for source in (rgba, png_bytes(Image.fromarray(rgba, "RGBA")), Image.fromarray(rgba, "RGBA")):
        np.testing.assert_array_equal(read_sketch_rgb(source), rgb)


def test_transparent_sketch_equals_same_strokes_on_white():
    on_white = preprocess_sketch(png_bytes(draw_strokes("RGB", (255, 255, 255))), CFG)
    transparent = draw_strokes("RGBA", (0, 0, 0, 0))  # black ink, transparent *black* background
    for source in (png_bytes(transparent), transparent, np.asarray(transparent)):
        assert torch.equal(preprocess_sketch(source, CFG), on_white)


def test_transparent_photo_is_composited_on_white():
    transparent = draw_strokes("RGBA", (0, 0, 0, 0))
    expected = preprocess_photo(draw_strokes("RGB", (255, 255, 255)), CFG)
    assert torch.equal(preprocess_photo(png_bytes(transparent), CFG), expected)


def test_palette_png_with_transparency_is_white_background():
    image = draw_strokes("RGBA", (0, 0, 0, 0)).convert("P")
    image.info["transparency"] = image.getpixel((0, 0))
    rgb = read_sketch_rgb(png_bytes(image))
    assert (rgb[0, 0] == 255).all() and (rgb.sum(axis=2) == 0).any()
    assert read_photo(png_bytes(image)).mode == "RGB"


def test_photo_follows_exif_orientation():
    image = Image.new("RGB", (40, 20), "white")
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif)
    assert read_photo(buffer.getvalue()).size == (20, 40)


def test_float_and_gray_arrays():
    gray = np.full((50, 60), 255, dtype=np.uint8)
    gray[10:40, 20:30] = 0
    expected = preprocess_sketch(gray, CFG)
    assert torch.equal(preprocess_sketch(gray.astype(np.float32) / 255, CFG), expected)
    assert torch.equal(preprocess_sketch(np.stack([gray] * 3, axis=2), CFG), expected)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        preprocess_sketch(gray.astype(np.float32), CFG)


# ----------------------------------------------------------------------------- strokes and SVG


SQUARE = [[[0, 100, 100, 0, 0], [0, 0, 100, 100, 0]]]


def test_render_strokes_puts_ink_on_the_strokes():
    image = np.asarray(render_strokes(SQUARE, size=128, line_width=3))
    assert image.shape == (128, 128, 3) and image.dtype == np.uint8
    ink = image.sum(axis=2) == 0
    ys, xs = np.nonzero(ink)
    margin = 128 // 16
    assert abs(xs.min() - margin) <= 2 and abs(xs.max() - (127 - margin)) <= 2  # fitted with a margin
    assert ink[64, margin] and ink[margin, 64]  # the left and top edges are drawn
    assert not ink[64, 64]  # the inside of the square stays white
    assert (image[0] == 255).all()  # the margin stays white


def test_square_stroke_list_makes_a_sketch():
    tensor = preprocess_sketch(SQUARE, CFG)
    assert tensor.shape == (3, 224, 224) and tensor.min() == -1 and tensor.max() == 1


def test_single_point_stroke_draws_a_dot_and_timestamps_are_ignored():
    image = np.asarray(render_strokes([[[5], [7], [0]]], size=32, line_width=1))
    assert (image.sum(axis=2) == 0).sum() >= 1
    with_time = [[[0, 50, 90], [0, 80, 10], [0, 10, 20]]]
    assert np.array_equal(np.asarray(render_strokes(with_time)), np.asarray(render_strokes([s[:2] for s in with_time])))


@pytest.mark.parametrize("suffix", [".json", ".ndjson"])
def test_strokes_files_and_bytes(tmp_path, suffix):
    expected = preprocess_sketch(SQUARE, CFG)
    record = json.dumps({"word": "square", "drawing": SQUARE})
    path = tmp_path / f"square{suffix}"
    path.write_text(record if suffix == ".json" else record + "\n" + record + "\n")
    assert torch.equal(preprocess_sketch(path, CFG), expected)
    assert torch.equal(preprocess_sketch(json.dumps(SQUARE).encode(), CFG), expected)
    with pytest.raises(NotAPhotoError, match="not an image"):  # a drawing is never a photo, whatever its name
        preprocess_photo(path, CFG)


SVG = b"""<?xml version="1.0"?>
<svg xmlns="http://www.w3.org/2000/svg" width="200" height="100" viewBox="0 0 400 200">
  <rect width="400" height="200" fill="white"/>
  <path d="M 20 20 L 120 20 C 160 20 160 100 120 100" stroke="black" stroke-width="4" fill="none"/>
  <g transform="translate(300 100)"><circle r="40" fill="none" stroke="#333" stroke-width="8"/></g>
</svg>"""


def test_svg_path_and_circle_render_ink(tmp_path):
    image = np.asarray(render_svg(SVG))
    assert image.shape == (128, 256, 3)  # the 200x100 document, longer side raised to 256 px
    ink = image.sum(axis=2) <= 300
    scale = 256 / 400  # viewBox units -> pixels
    assert ink[round(20 * scale), round(70 * scale)]  # on the horizontal line of the path
    assert ink[round(100 * scale), round(340 * scale)]  # right edge of the translated circle
    assert not ink[round(100 * scale), round(300 * scale)]  # circle centre: not filled
    assert not ink[round(150 * scale), round(60 * scale)]  # the white background rect is not ink
    path = tmp_path / "drawing.svg"
    path.write_bytes(SVG)
    assert torch.equal(preprocess_sketch(path, CFG), preprocess_sketch(SVG, CFG))


def test_svg_stroke_width_and_default_fill():
    def ink_pixels(width: str) -> int:
        svg = (
            '<svg xmlns="http://www.w3.org/2000/svg" width="300" height="300">'
            f'<line x1="50" y1="150" x2="250" y2="150" stroke="black" stroke-width="{width}"/></svg>'
        )
        return int((np.asarray(render_svg(svg)).sum(axis=2) == 0).sum())

    assert ink_pixels("12") > 4 * ink_pixels("2") > 0
    filled = render_svg(
        '<svg xmlns="http://www.w3.org/2000/svg" width="300" height="300"><circle cx="150" cy="150" r="50"/></svg>'
    )
    assert np.asarray(filled)[150, 150].sum() == 0  # SVG's default fill is black


# ----------------------------------------------------------------------------- errors


def truncated_png() -> bytes:
    data = png_bytes(draw_strokes("RGB", (255, 255, 255)))
    return data[: len(data) // 2]


def truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()[:1500]


@pytest.mark.parametrize(
    ("source", "match"),
    [
        (b"\x89PNG\r\n\x1a\n" + b"garbage" * 20, "corrupt"),
        (b"\xff\xd8\xff" + b"\x00" * 100, "corrupt"),
        (truncated_png(), "corrupt or truncated"),
        (truncated_jpeg(), "corrupt or truncated"),
        (b"hello, this is not an image", "not an image"),
        (png_header(8000, 6000), "too large"),
        (png_header(20000, 10000), "too large"),  # over Pillow's own decompression-bomb limit
        (b'{"drawing": [[[0, 1], [0]]]}', "malformed strokes"),
        (b"[[[0, 1], [0, 1]]", "malformed strokes JSON"),
        (b'{"word": "cat"}', "drawing"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'><path d='M 0 0 L 1 1'", "malformed SVG"),
        (42, "unsupported input type"),
        (np.zeros((4, 4, 2), dtype=np.uint8), "HxW"),
    ],
)
@pytest.mark.parametrize("fn", [preprocess_sketch, preprocess_photo])
def test_bad_inputs_raise_input_error(fn, source, match):
    if fn is preprocess_photo and isinstance(source, bytes) and source[:1] in (b"{", b"[", b"<"):
        match = "not an image"  # drawings are sketches only: a photo is what a photo decoder reads
    with pytest.raises(InputError, match=match):
        fn(source, CFG)


def test_error_messages_name_the_file(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("just some text\n")
    with pytest.raises(InputError, match="notes.png is not an image"):
        preprocess_photo(text, CFG)
    missing = tmp_path / "missing.png"
    with pytest.raises(InputError, match="file not found: .*missing.png"):
        preprocess_sketch(missing, CFG)
    bad_json = tmp_path / "strokes.json"
    bad_json.write_text("[[[0, 1], [0, 1]],")
    with pytest.raises(InputError, match="malformed strokes JSON in .*strokes.json"):
        preprocess_sketch(bad_json, CFG)
    big = tmp_path / "big.png"
    big.write_bytes(png_header(8000, 6000))
    with pytest.raises(InputError, match=f"big.png is too large: 8000x6000 .*{MAX_PIXELS:,}"):
        read_sketch_rgb(big)


@pytest.mark.parametrize(
    "source",
    [
        np.full((40, 30, 3), 255, dtype=np.uint8),
        png_bytes(Image.new("RGB", (30, 40), (200, 200, 200))),  # light gray is not ink
        png_bytes(Image.new("RGBA", (30, 40), (0, 0, 0, 0))),  # fully transparent
        [],
        [[[], []]],
    ],
)
def test_empty_sketches(source):
    with pytest.raises(EmptySketchError, match="the sketch is empty"):
        preprocess_sketch(source, CFG)


def test_empty_image_message_names_the_file(tmp_path):
    path = tmp_path / "blank.png"
    Image.new("L", (20, 20), 255).save(path)
    with pytest.raises(EmptySketchError, match=r"no visible stroke in .*blank.png"):
        preprocess_sketch(path, CFG)


def test_errors_are_sketchfind_errors():
    assert issubclass(EmptySketchError, InputError) and issubclass(InputError, SketchfindError)


def test_to_tensor_is_totensor_then_normalize_bit_for_bit():
    """The numpy conversion equals torchvision's ToTensor (/255) + Normalize(mean, std) op for op."""
    import torch

    from sketchfind.config import get_model_config
    from sketchfind.preprocess import to_tensor

    rgb = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for name in ("zse-lite0", "zse-vit-b16"):
        cfg = get_model_config(name).preprocess
        expected = torch.tensor(rgb).permute(2, 0, 1).float().div(255)
        expected = expected.sub(torch.tensor(cfg.mean).view(3, 1, 1)).div(torch.tensor(cfg.std).view(3, 1, 1))
        got = to_tensor(rgb, cfg)
        assert got.is_contiguous() and got.dtype == torch.float32
        assert torch.equal(got, expected)

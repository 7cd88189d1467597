"""Image loading: every common mode works; bad files and bombs are refused or skipped."""

import numpy as np
import pytest
from PIL import Image

from nearest_prompt.common.errors import InputError
from nearest_prompt.encoders.images import collect_images, load_image


def _save(img, path, **kw):
    img.save(path, **kw)
    return path


@pytest.fixture
def mode_images(tmp_path):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    out = {
        "rgb": _save(rgb, tmp_path / "rgb.png"),
        "gray": _save(rgb.convert("L"), tmp_path / "gray.png"),
        "palette": _save(rgb.convert("P"), tmp_path / "palette.gif"),
        "rgba": _save(rgb.convert("RGBA"), tmp_path / "rgba.png"),
        "la": _save(rgb.convert("LA"), tmp_path / "la.png"),
        "cmyk": _save(rgb.convert("CMYK"), tmp_path / "cmyk.jpg"),
        "bw": _save(rgb.convert("1"), tmp_path / "bw.png"),
        "webp": _save(rgb, tmp_path / "x.webp"),
    }
    g16 = Image.fromarray(np.full((30, 30), 65535, dtype=np.uint16))
    out["gray16"] = _save(g16, tmp_path / "gray16.png")
    return out


def test_every_mode_loads_as_rgb(mode_images):
    for name, path in mode_images.items():
        im = load_image(path)
        assert im.mode == "RGB", name
        assert im.size[0] > 0
    assert np.asarray(load_image(mode_images["gray16"])).min() == 255  # 16-bit full scale -> 8-bit full scale


def test_transparent_pixels_become_white(tmp_path):
    im = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert np.asarray(load_image(_save(im, tmp_path / "t.png"))).min() == 255


def test_conversions_give_the_right_pixel_values(tmp_path):
    """Pixel values, not only modes: each conversion against a hand-computed colour."""
    # CMYK (0, 255, 255, 0) is pure red; TIFF keeps CMYK losslessly (JPEG would not)
    cmyk = _save(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), tmp_path / "c.tif")
    assert load_image(cmyk).getpixel((1, 1)) == (255, 0, 0)
    # palette with a transparent index: opaque entries keep their colour, the transparent one is white
    pal = Image.new("P", (4, 1))
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    pal.info["transparency"] = 1
    got = load_image(_save(pal, tmp_path / "p.png", transparency=1))
    assert got.getpixel((0, 0)) == (10, 20, 30) and got.getpixel((1, 0)) == (255, 255, 255)
    # LA: grey 100 at alpha 128 over white: 100 * a + 255 * (1 - a)
    la = load_image(_save(Image.new("LA", (2, 2), (100, 128)), tmp_path / "la.png"))
    expect = round(100 * 128 / 255 + 255 * (1 - 128 / 255))
    assert all(abs(c - expect) <= 1 for c in la.getpixel((0, 0))), la.getpixel((0, 0))
    # RGBA half-transparent red over white
    rgba = load_image(_save(Image.new("RGBA", (2, 2), (255, 0, 0, 64)), tmp_path / "r.png"))
    g = round(255 * (1 - 64 / 255))
    assert rgba.getpixel((0, 0))[0] == 255 and all(abs(c - g) <= 1 for c in rgba.getpixel((0, 0))[1:])
    # 16-bit grey: 65535 -> 255, 257 * 100 -> 100; 1-bit: white stays 255
    g16 = Image.fromarray(np.array([[65535, 25700]], dtype=np.uint16))
    assert [load_image(_save(g16, tmp_path / "g.png")).getpixel((x, 0)) for x in (0, 1)] == [(255,) * 3, (100,) * 3]
    assert load_image(_save(Image.new("1", (2, 2), 1), tmp_path / "b.png")).getpixel((0, 0)) == (255, 255, 255)


def test_modes_embed(mode_images, clip_encoder):
    v = clip_encoder.encode_images([load_image(p) for p in mode_images.values()])
    assert v.shape == (len(mode_images), clip_encoder.dim)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


def test_truncated_and_non_image_files(tmp_path, mode_images):
    data = mode_images["rgb"].read_bytes()
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="not a readable image"):
        load_image(trunc)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(InputError):
        load_image(text)
    with pytest.raises(InputError, match="no such file"):
        load_image(tmp_path / "missing.png")


def test_decompression_bomb_is_refused(tmp_path):
    bomb = _save(Image.new("1", (10_000, 9_000)), tmp_path / "bomb.png")  # 90M pixels, a few KB on disk
    assert bomb.stat().st_size < 100_000
    with pytest.raises(InputError, match="decompression bomb"):
        load_image(bomb)
    with pytest.raises(InputError, match="decompression bomb"):
        collect_images([bomb])
    small = _save(Image.new("RGB", (20, 20)), tmp_path / "small.png")
    with pytest.raises(InputError, match="over the limit of 100 .*raise max_pixels"):
        load_image(small, max_pixels=100)
    with pytest.raises(InputError, match="over the pixel limit.*--max-pixels"):
        collect_images([tmp_path], max_pixels=100)


def test_pillows_own_check_runs_at_the_limit_set_for_the_process(tmp_path):
    """Ours checks every image against its own max_pixels without touching anything shared (images decode in
    parallel threads); Pillow's own check, which also sees animation frames, runs at the process's limit."""
    from nearest_prompt.encoders.images import pixel_limit

    small = _save(Image.new("RGB", (20, 20), (10, 20, 30)), tmp_path / "small.png")
    before = Image.MAX_IMAGE_PIXELS
    assert load_image(small, max_pixels=1000).getpixel((3, 3)) == (10, 20, 30)
    with pytest.raises(InputError, match="400 pixels is over the limit of 399") as e:
        load_image(small, max_pixels=399)
    assert e.value.param == "max_pixels" and Image.MAX_IMAGE_PIXELS == before  # ours changed nothing shared
    with pixel_limit(150):  # Pillow refuses over twice its limit (300 pixels): the 400-pixel image
        assert Image.MAX_IMAGE_PIXELS == 150
        with pytest.raises(InputError, match="over the limit of 1,000 pixels") as e:
            load_image(small, max_pixels=1000)
        assert e.value.param == "max_pixels" and "150" not in str(e.value)  # one limit quoted: ours
        with pytest.raises(InputError, match="skipped 1 file.s. over the pixel limit"):  # the header check too
            collect_images([tmp_path], max_pixels=1000)
    assert Image.MAX_IMAGE_PIXELS == before  # restored


def test_folder_skips_bad_files_and_explicit_bad_file_fails(tmp_path, mode_images):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a.png").write_bytes(mode_images["rgb"].read_bytes())
    (folder / "readme.txt").write_text("hello")
    (folder / ".hidden.png").write_text("ignored")
    s = collect_images([folder])
    assert [p.name for p in s.paths] == ["a.png"] and [k.path for k in s.skipped] == [str(folder / "readme.txt")]
    with pytest.raises(InputError, match="readme.txt"):
        collect_images([folder / "readme.txt"])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "x.txt").write_text("x")
    with pytest.raises(InputError, match="no usable images"):
        collect_images([empty])
    with pytest.raises(InputError, match="no such file"):
        collect_images([tmp_path / "nope"])

"""components.image_info: exclusion reasons, modes and bit depths, the perceptual hash, parallel reading."""

import io
import itertools
import os
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from components import image_info, storage
from components.image_info import describe_image_bytes, describe_uris, hamming_distance, perceptual_hash
from components.labels import (
    EXCLUDE_EMPTY_FILE,
    EXCLUDE_MISSING_FILE,
    EXCLUDE_NOT_DECODABLE,
    EXCLUDE_TOO_LARGE,
    EXCLUDE_TRUNCATED,
    EXCLUDE_UNREADABLE,
)
from tests.factories import encode, radiograph, raw_png


@pytest.fixture(scope="module")
def gray() -> np.ndarray:
    return radiograph(0)


@pytest.fixture(scope="module")
def png(gray) -> bytes:
    return encode(Image.fromarray(gray))


@pytest.fixture(scope="module")
def jpeg(gray) -> bytes:
    return encode(Image.fromarray(gray), "JPEG", quality=90)


def excluded(data: bytes) -> tuple[str, str]:
    row = describe_image_bytes(data)
    # An unusable file has no hash, size or mode.
    assert {k: row[k] for k in ("sha256", "phash", "width", "height", "mode", "bit_depth")} == {
        k: image_info.NO_FILE[k] for k in ("sha256", "phash", "width", "height", "mode", "bit_depth")
    }
    return row["exclusion_reason"], row["exclusion_detail"]


# ---------------------------------------------------------------- unusable files


def test_empty_file():
    assert excluded(b"") == (EXCLUDE_EMPTY_FILE, "empty file (0 bytes)")


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.99])
@pytest.mark.parametrize("kind", ["png", "jpeg"])
def test_truncated_image_data(kind, fraction, request):
    data = request.getfixturevalue(kind)
    reason, detail = excluded(data[: int(len(data) * fraction)])
    assert reason == EXCLUDE_TRUNCATED
    assert kind.upper() in detail
    assert "truncated" in detail
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_refuses_to_run_with_truncated_loading_on(monkeypatch, png):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        describe_image_bytes(png[: len(png) // 2])


@pytest.mark.parametrize(
    ("cut", "where"),
    [
        (lambda d: d[:-2], "ends before its image data"),  # JPEG without its EOI marker
        (lambda d: d[:4], "inside its header"),
        (lambda d: d[:100], "inside its header"),
    ],
)
def test_truncated_jpeg_header_and_end(jpeg, cut, where):
    reason, detail = excluded(cut(jpeg))
    assert reason == EXCLUDE_TRUNCATED
    assert where in detail


@pytest.mark.parametrize(
    ("cut", "where"),
    [
        (lambda d: d[:-12], "before its IEND chunk"),  # pixels complete, IEND missing: PIL alone loads it
        (lambda d: d[:8], "right after its signature"),
        (lambda d: d[:20], "inside its IHDR chunk"),
        (lambda d: d[:30], "inside its IHDR chunk"),
        (lambda d: d[:40], "inside the length and type of a chunk"),
        (lambda d: d[:45], "inside its IDAT chunk"),
    ],
)
def test_truncated_png_header_and_end(png, cut, where):
    reason, detail = excluded(cut(png))
    assert reason == EXCLUDE_TRUNCATED
    assert where in detail
    assert "PNG file of" in detail


@pytest.mark.parametrize(
    "data",
    [b"this is a text file named scan.png\n", b"<html><body>403 Forbidden</body></html>", bytes(range(256)) * 4],
)
def test_not_an_image(data):
    reason, detail = excluded(data)
    assert reason == EXCLUDE_NOT_DECODABLE
    assert "not an image format" in detail
    assert f"{len(data):,} bytes" in detail


def test_decompression_bomb_png_refused_from_its_header():
    bomb = raw_png(100_000, 100_000, 8, 0)  # 10 gigapixels declared, 100 bytes of file
    start = time.perf_counter()
    reason, detail = excluded(bomb)
    assert time.perf_counter() - start < 0.5  # nothing decoded or allocated
    assert reason == EXCLUDE_TOO_LARGE
    assert "100000x100000" in detail
    assert "40,000,000" in detail


def test_decompression_bomb_jpeg_refused_from_its_header(jpeg):
    # Rewrite the start-of-frame dimensions of a real JPEG to 20000 x 30000.
    sof = jpeg.index(b"\xff\xc0")
    bomb = jpeg[: sof + 5] + struct.pack(">HH", 30_000, 20_000) + jpeg[sof + 9 :]
    reason, detail = excluded(bomb)
    assert reason == EXCLUDE_TOO_LARGE
    assert "20000x30000" in detail


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("limit", [1000, 3000])  # PIL raises above 2x the limit, only warns between 1x and 2x
@pytest.mark.parametrize("image_format", ["PNG", "BMP"])  # BMP: a header this module does not parse itself
def test_limit_is_read_at_run_time(monkeypatch, gray, limit, image_format):
    data = encode(Image.fromarray(gray[:64, :64]), image_format)  # 4096 pixels
    assert describe_image_bytes(data)["exclusion_reason"] == ""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    assert excluded(data)[0] == EXCLUDE_TOO_LARGE


def test_corrupt_header_checksum_is_unreadable(png):
    corrupt = png[:29] + bytes([png[29] ^ 0xFF]) + png[30:]  # a flipped IHDR byte: bad CRC
    reason, detail = excluded(corrupt)
    assert reason == EXCLUDE_UNREADABLE
    assert "PNG signature but a corrupt header" in detail
    assert "checksum" in detail


def test_corrupt_compressed_data_is_unreadable(png):
    middle = len(png) // 2
    reason, detail = excluded(png[:middle] + b"\x00" * 64 + png[middle + 64 :])
    assert reason == EXCLUDE_UNREADABLE
    assert detail  # the decoder's own error text, e.g. "OSError: broken data stream ..."


# ---------------------------------------------------------------- supported files


def _variants(gray: np.ndarray) -> dict[str, tuple[bytes, str, int]]:
    """The same picture in every supported mode: (file bytes, expected PIL mode, expected bit depth)."""
    image = Image.fromarray(gray)
    rgba = image.convert("RGBA")
    rgba.putalpha(255)
    return {
        "L": (encode(image), "L", 8),
        "RGB": (encode(image.convert("RGB")), "RGB", 8),
        "RGBA": (encode(rgba), "RGBA", 8),
        "LA": (encode(image.convert("LA")), "LA", 8),
        "P": (encode(image.convert("RGB").quantize(256)), "P", 8),
        "I;16": (encode(Image.fromarray(gray.astype(np.uint16) * 257)), "I;16", 16),
        "I;16 12-bit range": (encode(Image.fromarray(gray.astype(np.uint16) * 16)), "I;16", 16),
        "JPEG L": (encode(image, "JPEG", quality=95), "L", 8),
        "JPEG RGB": (encode(image.convert("RGB"), "JPEG", quality=95), "RGB", 8),
        "TIFF I;16": (encode(Image.fromarray(gray.astype(np.uint16) * 257), "TIFF"), "I;16", 16),
    }


@pytest.mark.parametrize(
    "name", ["L", "RGB", "RGBA", "LA", "P", "I;16", "I;16 12-bit range", "JPEG L", "JPEG RGB", "TIFF I;16"]
)
def test_supported_modes_agree_on_size_depth_and_hash(gray, png, name):
    data, mode, depth = _variants(gray)[name]
    row = describe_image_bytes(data)
    assert row["exclusion_reason"] == ""
    assert row["exclusion_detail"] == ""
    assert (row["width"], row["height"], row["mode"], row["bit_depth"]) == (256, 256, mode, depth)
    assert len(row["sha256"]) == 64
    assert len(row["phash"]) == 16
    reference = describe_image_bytes(png)["phash"]
    # Same picture: the same grayscale as the models see it, hence (nearly) the same hash.
    assert hamming_distance(row["phash"], reference) <= 4, name


def test_sixteen_bit_hash_uses_rescaled_values(gray):
    # Values 4096..65535: clipping to 8 bits (convert("L")) would make the image flat white.
    wide = 4096 + gray.astype(np.uint16) * 240
    row = describe_image_bytes(encode(Image.fromarray(wide)))
    assert row["mode"] == "I;16"
    assert row["bit_depth"] == 16
    flat = describe_image_bytes(encode(Image.new("L", (256, 256), 255)))["phash"]
    assert hamming_distance(row["phash"], flat) > 16
    assert hamming_distance(row["phash"], describe_image_bytes(encode(Image.fromarray(gray)))["phash"]) <= 2


def test_alpha_is_composited_over_black(gray):
    image = Image.fromarray(gray).convert("RGBA")
    image.putalpha(Image.fromarray(np.where(np.arange(256)[None, :] < 128, 0, 255).astype(np.uint8).repeat(256, 0)))
    left_black = gray.copy()
    left_black[:, :128] = 0
    assert (
        describe_image_bytes(encode(image))["phash"]
        == describe_image_bytes(encode(Image.fromarray(left_black)))["phash"]
    )


def test_one_bit_image():
    bits = Image.fromarray(radiograph(3) > 128)
    row = describe_image_bytes(encode(bits))
    assert (row["mode"], row["bit_depth"], row["exclusion_reason"]) == ("1", 1, "")


def test_header_bit_depths_beyond_pil_modes():
    # 16-bit RGB opens as 8-bit RGB in PIL; the file's real depth is 16.
    rgb16 = raw_png(4, 2, 16, 2, [bytes(range(24)), bytes(range(24, 48))])
    assert (describe_image_bytes(rgb16)["mode"], describe_image_bytes(rgb16)["bit_depth"]) == ("RGB", 16)
    # 4-bit grayscale opens as L.
    gray4 = raw_png(4, 2, 4, 0, [b"\x01\x23", b"\x45\x67"])
    assert (describe_image_bytes(gray4)["mode"], describe_image_bytes(gray4)["bit_depth"]) == ("L", 4)
    # A palette's header depth counts index bits; its colours are 8-bit.
    palette = encode(Image.new("P", (8, 8)))
    assert palette[24] == 1
    assert describe_image_bytes(palette)["bit_depth"] == 8


def test_odd_sizes_and_tiny_images():
    for size in [(1, 1), (7, 300), (300, 7), (33, 31), (1000, 600)]:
        row = describe_image_bytes(encode(Image.fromarray(radiograph(1, size))))
        assert (row["width"], row["height"], row["exclusion_reason"]) == (*size, "")
        assert len(row["phash"]) == 16


# ---------------------------------------------------------------- the perceptual hash


def pinned_picture() -> Image.Image:
    """Pure arithmetic, no random numbers: the same pixels with any numpy."""
    y, x = np.mgrid[0:240, 0:320]
    picture = 40 + 0.5 * x + 30 * np.sin(y / 13.0) + 90 * (((x - 110) ** 2 + (y - 140) ** 2) < 55**2)
    picture[30:90, 200:290] -= 35
    return Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8))


def test_hash_is_pinned():
    # The manifest compares hashes across runs: a change here must be deliberate.
    assert describe_image_bytes(encode(pinned_picture()))["phash"] == "867939c494b77938"
    assert describe_image_bytes(encode(Image.new("L", (64, 64), 128)))["phash"] == "8000000000000000"


def test_hamming_distance():
    assert hamming_distance("0000000000000000", "ffffffffffffffff") == 64
    assert hamming_distance("8000000000000001", "0000000000000000") == 2
    assert hamming_distance("b9c3a3d46f1aa0f0", "b9c3a3d46f1aa0f0") == 0


def _copies(image: Image.Image) -> dict[str, bytes]:
    width, height = image.size
    noisy = np.clip(
        np.asarray(image, dtype=np.float64) + np.random.default_rng(9).normal(0, 5, (height, width)), 0, 255
    )
    return {
        "jpeg q75": encode(image, "JPEG", quality=75),
        "half size": encode(image.resize((width // 2, height // 2), Image.Resampling.BILINEAR)),
        "1.5x size": encode(image.resize((width * 3 // 2, height * 3 // 2), Image.Resampling.BICUBIC)),
        "odd size": encode(image.resize((width * 2 // 3 + 1, height * 2 // 3 - 1), Image.Resampling.LANCZOS)),
        "noise": encode(Image.fromarray(noisy.astype(np.uint8))),
        "rgb jpeg": encode(image.convert("RGB"), "JPEG", quality=85),
    }


def test_hash_is_stable_under_reencoding_and_resizing():
    for seed in range(6):
        image = Image.fromarray(radiograph(seed, (320, 256)))
        original = describe_image_bytes(encode(image))["phash"]
        for name, data in _copies(image).items():
            assert hamming_distance(original, describe_image_bytes(data)["phash"]) <= 6, (seed, name)


def test_hash_separates_different_images():
    hashes = [describe_image_bytes(encode(Image.fromarray(radiograph(seed))))["phash"] for seed in range(12)]
    distances = [hamming_distance(a, b) for a, b in itertools.combinations(hashes, 2)]
    assert min(distances) >= 12
    assert np.median(distances) >= 24


def test_perceptual_hash_of_an_open_image_matches_describe(png):
    with Image.open(io.BytesIO(png)) as image:
        assert perceptual_hash(image) == describe_image_bytes(png)["phash"]


def test_hash_on_real_radiographs(shared_datasets):
    folder = shared_datasets / "covid-chestxray-dataset" / "images"
    if not folder.is_dir():
        pytest.skip(f"{folder} not present")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[::60][:8]
    hashes = []
    for path in paths:
        data = path.read_bytes()
        row = describe_image_bytes(data)
        assert row["exclusion_reason"] == "", (path, row["exclusion_detail"])
        hashes.append(row["phash"])
        with Image.open(path) as image:
            image.load()
            # JPEGs are hashed from libjpeg's scaled decode: close to the full decode.
            assert hamming_distance(row["phash"], perceptual_hash(image)) <= 8, path.name
            for name, copy in _copies(image.convert("L")).items():
                assert hamming_distance(row["phash"], describe_image_bytes(copy)["phash"]) <= 10, (path.name, name)
    distances = [hamming_distance(a, b) for a, b in itertools.combinations(hashes, 2)]
    assert np.median(distances) >= 16  # chest films look alike at 8x8, yet stay far apart


# ---------------------------------------------------------------- describe_uris


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory, png, jpeg):
    folder = tmp_path_factory.mktemp("images")
    files = {f"scan{index:03d}.png": encode(Image.fromarray(radiograph(index, (96, 80)))) for index in range(40)}
    files.update({"photo.jpg": jpeg, "empty.png": b"", "text.png": b"not an image\n", "cut.png": png[: len(png) // 2]})
    for name, data in files.items():
        (folder / name).write_bytes(data)
    uris = [str(folder / name) for name in sorted(files)] + [str(folder / "missing.png")]
    return uris


def test_describe_uris_serial_rows(image_folder):
    rows = describe_uris(image_folder)
    by_name = {os.path.basename(uri): row for uri, row in zip(image_folder, rows, strict=False)}
    assert by_name["empty.png"]["exclusion_reason"] == EXCLUDE_EMPTY_FILE
    assert by_name["text.png"]["exclusion_reason"] == EXCLUDE_NOT_DECODABLE
    assert by_name["cut.png"]["exclusion_reason"] == EXCLUDE_TRUNCATED
    assert by_name["missing.png"]["exclusion_reason"] == EXCLUDE_MISSING_FILE
    assert "missing.png" in by_name["missing.png"]["exclusion_detail"]
    assert by_name["photo.jpg"]["exclusion_reason"] == ""
    assert by_name["scan000.png"]["width"] == 96
    assert rows[:-1] == [describe_image_bytes(Path(uri).read_bytes()) for uri in image_folder[:-1]]


@pytest.mark.parametrize("executor", ["process", "thread", "auto"])
def test_parallel_equals_serial(image_folder, executor):
    assert describe_uris(image_folder, workers=2, executor=executor) == describe_uris(image_folder)


def test_workers_zero_means_all_cores_and_small_inputs(image_folder):
    assert describe_uris(image_folder[:3], workers=0) == describe_uris(image_folder[:3])
    assert describe_uris([], workers=2) == []
    assert describe_uris(image_folder[:1], workers=8) == describe_uris(image_folder[:1])


def test_unknown_executor_is_refused(image_folder):
    with pytest.raises(ValueError, match="executor"):
        describe_uris(image_folder, workers=2, executor="cluster")


def test_progress_bar_on_stderr(image_folder, capsys):
    describe_uris(image_folder[:5], progress=True)
    captured = capsys.readouterr()
    assert "5/5" in captured.err
    assert captured.out == ""
    describe_uris(image_folder[:5], progress=False)
    assert capsys.readouterr().err == ""


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_permission_denied_raises_in_a_process_pool(tmp_path, image_folder):
    locked = tmp_path / "locked.png"
    locked.write_bytes(b"x")
    locked.chmod(0)
    with pytest.raises(storage.StorageError, match="permission denied"):
        describe_uris([*image_folder, str(locked)], workers=2, executor="process")


@pytest.mark.parametrize(("workers", "executor"), [(1, "auto"), (2, "process"), (2, "thread")])
def test_errors_other_than_missing_files_propagate(tmp_path, image_folder, workers, executor, monkeypatch):
    (tmp_path / "dir.png").mkdir()  # a folder where a file should be counts as missing, not as an error
    rows = describe_uris([str(tmp_path / "dir.png")], workers=workers, executor=executor)
    assert rows[0]["exclusion_reason"] == EXCLUDE_MISSING_FILE
    if executor == "process":
        # A monkeypatch does not reach the pool's processes: a name too long for the
        # file system makes the read itself fail there (OSError, errno ENAMETOOLONG).
        with pytest.raises(OSError, match="too long"):
            describe_uris([*image_folder, str(tmp_path / ("x" * 300))], workers=workers, executor=executor)
        return

    def denied(uri):
        raise storage.StorageError(f"{uri}: access denied")

    monkeypatch.setattr(storage, "read_bytes", denied)
    with pytest.raises(storage.StorageError, match="access denied"):
        describe_uris(["a.png", "b.png"], workers=workers, executor=executor)


def test_s3_uris_use_threads_and_keep_order(monkeypatch, png, jpeg):
    objects = {f"s3://bucket/images/{index}.png": (png if index % 2 else jpeg) for index in range(9)}
    threads = set()

    def read_object(uri):
        threads.add(threading.current_thread().name)
        if uri not in objects:
            raise storage.MissingFileError(f"{uri} does not exist")
        return objects[uri]

    monkeypatch.setattr(storage, "read_bytes", read_object)
    uris = [*objects, "s3://bucket/images/gone.png"]
    rows = describe_uris(uris, workers=3)
    assert [row["phash"] for row in rows[:-1]] == [describe_image_bytes(objects[uri])["phash"] for uri in objects]
    assert rows[-1]["exclusion_reason"] == EXCLUDE_MISSING_FILE
    assert threads
    assert all(name.startswith("describe_uri") for name in threads)


@pytest.mark.parametrize(("workers", "executor"), [(1, "auto"), (2, "auto"), (2, "process")])
def test_describe_uris_on_s3(s3_env, png, jpeg, workers, executor):
    # Runs after the local process-pool tests: the fork server is already up, started
    # before these AWS variables existed, and its workers must still see them.
    bucket = s3_env["dir"] / "describe-images"
    bucket.mkdir(exist_ok=True)
    local = {"a.png": png, "b.jpg": jpeg, "c.png": b"", "d.png": png[:100]}
    for name, data in local.items():
        (bucket / name).write_bytes(data)
    time.sleep(s3_env["settle_s"])
    uris = [f"s3://describe-images/{name}" for name in local] + ["s3://describe-images/gone.png"]
    rows = describe_uris(uris, workers=workers, executor=executor)
    assert rows[:-1] == [describe_image_bytes(data) for data in local.values()]
    assert rows[-1]["exclusion_reason"] == EXCLUDE_MISSING_FILE
    with pytest.raises(storage.StorageError, match="does not exist"):  # no such bucket: an error, not a row
        describe_uris([*uris, "s3://no-such-bucket-here/x.png"], workers=workers, executor=executor)

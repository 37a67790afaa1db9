"""components.storage on local folders and on a real S3-compatible server (rclone serve s3).

No mocks: S3 tests talk to `rclone serve s3` (fixtures s3_server / s3_env in conftest),
configured only through the standard AWS environment variables.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from components import s3, storage
from components.storage import MissingFileError, OutsideRootError, StorageError
from tests.factories import png_bytes, write_bytes, write_ieee8023
from tests.servers import free_port

# ---------------------------------------------------------------- helpers


def new_bucket(server: dict) -> str:
    """A fresh bucket (a top-level folder of the served directory)."""
    name = f"b-{uuid.uuid4().hex[:12]}"
    (Path(server["dir"]) / name).mkdir()
    return name


def uploader_client(server: dict):
    """A plain boto3 S3 client of the test's own, to put objects the way another S3 client would."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=server["endpoint"],
        aws_access_key_id=server["access_key"],
        aws_secret_access_key=server["secret_key"],
        region_name="us-east-1",
    )


def settle(server: dict) -> None:
    """Wait until files written straight into the served folder are listed (rclone's dir cache)."""
    time.sleep(server["settle_s"])


IEEE_COLUMNS = ["filename", "patientid", "finding", "view", "modality", "age"]
IEEE_ROWS = [
    ("p1_a.png", "p1", "COVID-19", "PA", "X-ray", "54"),
    ("p2_a.png", "p2", "Pneumonia/Viral/SARS", "AP", "X-ray", "8"),
    ("p3_a.png", "p3", "No Finding", "PA", "X-ray", ""),
    ("p3_b.png", "p3", "No Finding", "L", "X-ray", "40"),  # lateral view
    ("ct_1.png", "p4", "COVID-19", "Axial", "CT", "61"),  # not an X-ray, not read
    ("missing.png", "p5", "COVID-19", "PA", "X-ray", "33"),  # file absent
    ("p6_copy.png", "p6", "COVID-19", "AP Supine", "X-ray", "70"),  # same bytes as p1_a
    ("../../outside.png", "p7", "COVID-19", "PA", "X-ray", "20"),  # escapes the root
    ("p8_rgb.png", "p8", "Pneumonia", "PA", "X-ray", "12"),
]


def make_ieee8023(root: Path) -> Path:
    """A small ieee8023 covid-chestxray-dataset layout: metadata.csv (with a BOM) + images/."""
    names = ["p1_a.png", "p2_a.png", "p3_a.png", "p3_b.png", "ct_1.png"]
    images = {name: png_bytes(seed) for seed, name in enumerate(names)}
    images["p6_copy.png"] = images["p1_a.png"]
    images["p8_rgb.png"] = png_bytes(99, mode="RGB")
    images[".DS_Store"] = b"\x00junk"
    rows = [dict(zip(IEEE_COLUMNS, row, strict=True)) for row in IEEE_ROWS]
    return write_ieee8023(root, rows, images, encoding="utf-8-sig")


def comparable(manifest, root: str) -> list[dict]:
    """Manifest rows with URIs relative to their root and patient ids without the source name."""
    prefix = root.rstrip("/") + "/"
    rows = []
    for row in manifest.to_dict("records"):
        assert row["uri"].startswith(prefix), row["uri"]
        rows.append(
            {
                "relative": row["uri"][len(prefix) :],
                "patient": row["patient_id"].split(":", 1)[1],
                **{
                    key: row[key]
                    for key in (
                        "sha256",
                        "phash",
                        "width",
                        "height",
                        "mode",
                        "view",
                        "age_group",
                        "finding",
                        "label",
                        "exclusion_reason",
                    )
                },
            }
        )
    return sorted(rows, key=lambda row: row["relative"])


# ---------------------------------------------------------------- local: paths


def test_child_uri_refuses_paths_outside_the_root(tmp_path):
    root = tmp_path / "root"
    write_bytes(root / "images" / "a.png", b"x")
    outside = write_bytes(tmp_path / "secret" / "passwd", b"secret")
    for bad in (
        "../../etc/passwd",
        "images/../../x.png",
        "..",
        "/etc/passwd",
        "\\etc\\passwd",
        "C:\\Windows\\x",
        "",
        ".",
    ):
        with pytest.raises(OutsideRootError):
            storage.child_uri(str(root), bad)
    with pytest.raises(OutsideRootError, match="outside the source root"):
        storage.child_uri("s3://bucket/ieee", "../../etc/passwd")
    with pytest.raises(OutsideRootError, match="absolute"):
        storage.child_uri("s3://bucket/ieee", "/etc/passwd")

    # A symlink inside the root that points outside it is refused, whole folder or file.
    (root / "escape").symlink_to(outside.parent, target_is_directory=True)
    (root / "escape.png").symlink_to(outside)
    with pytest.raises(OutsideRootError, match="outside the source root"):
        storage.child_uri(str(root), "escape/passwd")
    with pytest.raises(OutsideRootError):
        storage.child_uri(str(root), "escape.png")

    # ... one pointing inside the root is fine.
    (root / "alias").symlink_to(root / "images", target_is_directory=True)
    assert storage.child_uri(str(root), "alias/a.png") == str(root / "alias" / "a.png")
    assert storage.child_uri(str(root), "./images//a.png") == str(root / "images" / "a.png")
    assert storage.child_uri("s3://bucket/ieee/", "images/./a.png") == "s3://bucket/ieee/images/a.png"


def test_parse_s3_uri():
    assert storage.parse_s3_uri("s3://bucket") == ("bucket", "")
    assert storage.parse_s3_uri("s3://bucket/") == ("bucket", "")
    assert storage.parse_s3_uri("s3://bucket/a/b.png") == ("bucket", "a/b.png")
    for bad in ("s3://", "s3:///key", "s3:// bad/key", "/local/path"):
        with pytest.raises(StorageError, match="S3 URI"):
            storage.parse_s3_uri(bad)


def test_relative_key_skips_directory_markers():
    assert s3.relative_key("ieee/", "ieee/images/a.png") == "images/a.png"
    assert s3.relative_key("", "a.png") == "a.png"
    assert s3.relative_key("ieee/", "ieee/") is None
    assert s3.relative_key("ieee/", "ieee/images/") is None


# ---------------------------------------------------------------- local: files


def test_local_list_files_skips_hidden_files(tmp_path):
    for name in ("b.png", "a/c.png", "a/d/e.jpg", ".DS_Store", "a/._c.png", ".git/config", "a/.cache/x.png"):
        write_bytes(tmp_path / name, b"x")
    assert storage.list_files(str(tmp_path)) == ["a/c.png", "a/d/e.jpg", "b.png"]
    assert storage.root_is_dir(str(tmp_path))
    assert not storage.root_is_dir(str(tmp_path / "nope"))
    with pytest.raises(StorageError, match="not a directory"):
        storage.list_files(str(tmp_path / "b.png"))


def test_local_read_bytes_and_text(tmp_path):
    write_bytes(tmp_path / "bom.csv", "\ufeffa,b\n1,2\n")
    write_bytes(tmp_path / "latin1.txt", b"caf\xe9")
    assert storage.read_bytes(str(tmp_path / "bom.csv")).startswith(b"\xef\xbb\xbf")
    assert storage.read_text(str(tmp_path / "bom.csv")) == "a,b\n1,2\n"
    with pytest.raises(MissingFileError, match="missing.png"):
        storage.read_bytes(str(tmp_path / "missing.png"))
    with pytest.raises(MissingFileError):
        storage.read_bytes(str(tmp_path))  # a folder is not a file
    with pytest.raises(StorageError, match="not UTF-8"):
        storage.read_text(str(tmp_path / "latin1.txt"))


# ---------------------------------------------------------------- S3: client


def test_client_is_cached_thread_safe_path_style_with_retries(s3_env, monkeypatch):
    with ThreadPoolExecutor(8) as pool:
        clients = list(pool.map(lambda _: s3.client(), range(32)))
    assert len({id(made) for made in clients}) == 1
    made = clients[0]
    assert made.meta.endpoint_url == s3_env["endpoint"]
    assert made.meta.region_name == "us-east-1"
    assert made.meta.config.s3["addressing_style"] == "path"
    assert made.meta.config.retries == {"mode": "standard", "total_max_attempts": s3.MAX_ATTEMPTS}
    assert made.meta.config.connect_timeout == s3.CONNECT_TIMEOUT_S
    assert made.meta.config.read_timeout == s3.READ_TIMEOUT_S

    s3.reset_client()
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    assert s3.client() is not made
    assert s3.client().meta.config.retries["total_max_attempts"] == 2

    # Real AWS (no endpoint configured): virtual-host addressing left to botocore,
    # region defaults to us-east-1. Building a client makes no request.
    for name in ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name)
    s3.reset_client()
    aws = s3.client()
    assert "amazonaws.com" in aws.meta.endpoint_url
    assert aws.meta.region_name == "us-east-1"
    assert (aws.meta.config.s3 or {}).get("addressing_style") != "path"


def test_forked_child_builds_its_own_client(s3_env):
    bucket = new_bucket(s3_env)
    write_bytes(Path(s3_env["dir"]) / bucket / "x.txt", "hello")
    settle(s3_env)
    parent_client = s3.client()
    read, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report and leave without running pytest's teardown
        result = {}
        try:
            result["cached_pid_was_parent"] = s3._cached is None or s3._cached[0] != os.getpid()
            result["text"] = storage.read_text(f"s3://{bucket}/x.txt")
            result["cached_pid_is_child"] = s3._cached[0] == os.getpid()
        except BaseException as error:  # noqa: BLE001
            result["error"] = repr(error)
        finally:
            os.write(write_end, json.dumps(result).encode())
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read) as pipe:
        result = json.loads(pipe.read())
    os.waitpid(pid, 0)
    assert result == {"cached_pid_was_parent": True, "text": "hello", "cached_pid_is_child": True}
    assert s3.client() is parent_client


# ---------------------------------------------------------------- S3: files


def test_s3_list_files_sorted_relative_paginated(s3_env):
    bucket = new_bucket(s3_env)
    base = Path(s3_env["dir"]) / bucket
    expected = [f"img_{index:02d}.png" for index in range(23)] + ["sub/deep/x.jpg", "z.txt", "Z.png"]
    random.Random(0).shuffle(expected)
    for name in expected:
        write_bytes(base / "data" / name, name)
    for name in ("data/.DS_Store", "data/sub/._x.jpg", "data/.git/config", "data2/not-below-prefix.png", "other.png"):
        write_bytes(base / name, b"x")
    settle(s3_env)

    root = f"s3://{bucket}/data"
    assert storage.list_files(root) == sorted(expected)
    assert storage.list_files(root + "/") == sorted(expected)
    # 4 keys a page: 29 keys need 8 ListObjectsV2 pages.
    pages = []
    s3.client().meta.events.register("after-call.s3.ListObjectsV2", lambda **kwargs: pages.append(1))
    keys = s3.list_keys(root, page_size=4)
    assert len(pages) == 8
    assert sorted(keys) == sorted([*expected, ".DS_Store", "sub/._x.jpg", ".git/config"])
    assert storage.list_files(f"s3://{bucket}") == sorted(
        [*(f"data/{name}" for name in expected), "data2/not-below-prefix.png", "other.png"]
    )
    assert storage.root_is_dir(root)
    assert storage.root_is_dir(f"s3://{bucket}")
    assert not storage.root_is_dir(f"s3://{bucket}/dat")  # a prefix is a folder, not a string prefix
    assert not storage.root_is_dir(f"s3://{bucket}/nothing-here")
    assert storage.list_files(f"s3://{bucket}/nothing-here") == []


def test_s3_read_bytes_and_text_uploaded_and_on_disk(s3_env):

    bucket = new_bucket(s3_env)
    image = png_bytes(7)
    write_bytes(Path(s3_env["dir"]) / bucket / "images" / "a.png", image)
    uploader = uploader_client(s3_env)
    uploader.put_object(Bucket=bucket, Key="meta/metadata.csv", Body="\ufeffa,b\n1,2\n".encode())
    settle(s3_env)

    assert storage.read_bytes(f"s3://{bucket}/images/a.png") == image
    assert storage.read_bytes(f"s3://{bucket}/meta/metadata.csv").startswith(b"\xef\xbb\xbf")
    assert storage.read_text(f"s3://{bucket}/meta/metadata.csv") == "a,b\n1,2\n"
    assert (Path(s3_env["dir"]) / bucket / "meta" / "metadata.csv").is_file()  # the upload landed on disk

    with pytest.raises(MissingFileError, match=f"s3://{bucket}/images/missing.png"):
        storage.read_bytes(f"s3://{bucket}/images/missing.png")
    with pytest.raises(MissingFileError):
        storage.read_bytes(f"s3://{bucket}/images")  # a folder, not an object
    with pytest.raises(MissingFileError):
        storage.read_bytes(f"s3://{bucket}/images/")

    # Many threads share the one client.
    names = [f"t/{index}.bin" for index in range(16)]
    for index, name in enumerate(names):
        write_bytes(Path(s3_env["dir"]) / bucket / name, bytes([index]) * 1000)
    settle(s3_env)
    with ThreadPoolExecutor(8) as pool:
        data = list(pool.map(lambda name: storage.read_bytes(f"s3://{bucket}/{name}"), names))
    assert data == [bytes([index]) * 1000 for index in range(16)]


# ---------------------------------------------------------------- S3: errors


def test_s3_missing_bucket_and_malformed_uri(s3_env):
    uri = "s3://no-such-bucket-cxr/ieee"
    for call in (storage.list_files, storage.root_is_dir):
        with pytest.raises(s3.S3BucketNotFoundError, match=r"'no-such-bucket-cxr' does not exist") as caught:
            call(uri)
        assert uri in str(caught.value)
        assert s3_env["endpoint"] in str(caught.value)
    with pytest.raises(s3.S3BucketNotFoundError, match="no-such-bucket-cxr"):
        storage.read_bytes(uri + "/metadata.csv")
    for bad in ("s3://", "s3:///ieee"):
        with pytest.raises(StorageError, match="malformed S3 URI"):
            storage.list_files(bad)
        with pytest.raises(StorageError, match="malformed S3 URI"):
            storage.read_bytes(bad + "/x.png")
    with pytest.raises(StorageError, match="Bad_Bucket"):
        storage.list_files("s3://Bad_Bucket!/x")


def test_s3_endpoint_without_scheme_is_a_clear_error(s3_env, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "localhost:9000")
    s3.reset_client()
    with pytest.raises(s3.S3ConfigError, match=r"s3://somebucket/x: .*localhost:9000.*AWS_ENDPOINT_URL"):
        storage.list_files("s3://somebucket/x")


@pytest.mark.parametrize(
    "variable, value, code",
    [
        ("AWS_SECRET_ACCESS_KEY", "wrong-secret", "SignatureDoesNotMatch"),
        ("AWS_ACCESS_KEY_ID", "unknown-key", "InvalidAccessKeyId"),
    ],
)
def test_s3_bad_credentials(s3_env, monkeypatch, variable, value, code):
    bucket = new_bucket(s3_env)
    write_bytes(Path(s3_env["dir"]) / bucket / "x.png", b"x")
    settle(s3_env)
    monkeypatch.setenv(variable, value)
    s3.reset_client()
    with pytest.raises(s3.S3AccessDeniedError, match=code) as caught:
        storage.list_files(f"s3://{bucket}/")
    message = str(caught.value)
    assert f"s3://{bucket}/" in message
    assert repr(bucket) in message
    assert "AWS_SECRET_ACCESS_KEY" in message
    with pytest.raises(s3.S3AccessDeniedError, match=code):
        storage.read_bytes(f"s3://{bucket}/x.png")


def test_s3_no_credentials(s3_env, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    s3.reset_client()
    with pytest.raises(s3.S3CredentialsError, match="s3://somebucket/x.*AWS_ACCESS_KEY_ID"):
        storage.read_bytes("s3://somebucket/x.png")


def test_s3_unreachable_endpoint_fails_fast_with_clear_error(s3_env, monkeypatch):
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")  # one retry, so the test stays quick
    s3.reset_client()
    sent = []
    s3.client().meta.events.register("before-send.s3", lambda **kwargs: sent.append(1))
    start = time.perf_counter()
    with pytest.raises(s3.S3ConnectionError, match="unreachable") as caught:
        storage.list_files("s3://somebucket/ieee")
    assert len(sent) == 2  # the first try and one retry
    with pytest.raises(s3.S3ConnectionError, match="s3://somebucket/ieee/metadata.csv"):
        storage.read_bytes("s3://somebucket/ieee/metadata.csv")
    assert time.perf_counter() - start < 5
    message = str(caught.value)
    assert "s3://somebucket/ieee" in message
    assert endpoint in message
    assert "AWS_ENDPOINT_URL" in message


# ---------------------------------------------------------------- S3: end to end


def test_ieee8023_manifest_from_s3_matches_local(s3_env, tmp_path):
    from components.imaging import load_images
    from components.manifest import build_manifest, included
    from components.sources import Ieee8023Options

    local_root = make_ieee8023(tmp_path / "ieee")
    bucket = new_bucket(s3_env)
    shutil.copytree(local_root, Path(s3_env["dir"]) / bucket / "ieee")  # straight onto the served disk
    settle(s3_env)
    s3_root = f"s3://{bucket}/ieee"

    local = build_manifest([Ieee8023Options(root=str(local_root), name="localieee")], "multiclass")
    remote = build_manifest([Ieee8023Options(root=s3_root, name="s3ieee")], "multiclass")
    assert comparable(remote, s3_root) == comparable(local, str(local_root))
    assert (remote["source"] == "s3ieee").all()
    assert remote["patient_id"].str.startswith("s3ieee:").all()

    reasons = dict(zip(remote["uri"].str.rsplit("/", n=1).str[-1], remote["exclusion_reason"], strict=False))
    assert reasons == {
        "p1_a.png": "",
        "p2_a.png": "",
        "p3_a.png": "",
        "p3_b.png": "lateral view",
        "ct_1.png": "not an X-ray",
        "missing.png": "missing file",
        "p6_copy.png": "duplicate image",
        "outside.png": "path outside the source root",
        "p8_rgb.png": "",
    }
    used = included(remote)
    assert dict(zip(used["uri"].str.rsplit("/", n=1).str[-1], used["label"], strict=False)) == {
        "p1_a.png": "COVID-19",
        "p2_a.png": "pneumonia",
        "p3_a.png": "normal",
        "p8_rgb.png": "pneumonia",
    }
    assert (used["sha256"].str.len() == 64).all()

    stack = load_images(list(used["uri"]), 32)
    assert stack.shape == (4, 32, 32)
    assert stack.dtype == np.uint8
    np.testing.assert_array_equal(stack, load_images(list(included(local)["uri"]), 32))
    with pytest.raises(MissingFileError):
        load_images([f"{s3_root}/images/missing.png"], 32)


def test_folder_layout_from_s3_uploaded_with_boto3(s3_env, tmp_path):

    from components.manifest import build_manifest, included
    from components.sources import FolderOptions

    bucket = f"b-{uuid.uuid4().hex[:12]}"
    files = {
        "COVID-19/p1_a.png": png_bytes(1),
        "COVID-19/p2_a.png": png_bytes(2),
        "normal/p3_a.png": png_bytes(3),
        "Pneumonia/p4_a.png": png_bytes(4, mode="RGB"),
        "Pneumonia/notes.txt": b"not an image",
        "README.md": b"# ignored",
        "normal/.DS_Store": b"x",
    }
    uploader = uploader_client(s3_env)
    uploader.create_bucket(Bucket=bucket)
    assert (Path(s3_env["dir"]) / bucket).is_dir()
    for name, data in files.items():
        uploader.put_object(Bucket=bucket, Key=f"folder/{name}", Body=data)
        write_bytes(tmp_path / "folder" / name, data)

    remote = build_manifest([FolderOptions(root=f"s3://{bucket}/folder", name="s3folder")], "multiclass")
    local = build_manifest([FolderOptions(root=str(tmp_path / "folder"), name="s3folder")], "multiclass")
    assert comparable(remote, f"s3://{bucket}/folder") == comparable(local, str(tmp_path / "folder"))
    labels = dict(zip(remote["uri"], remote["label"], strict=False))
    assert labels == {
        f"s3://{bucket}/folder/COVID-19/p1_a.png": "COVID-19",
        f"s3://{bucket}/folder/COVID-19/p2_a.png": "COVID-19",
        f"s3://{bucket}/folder/Pneumonia/notes.txt": "",
        f"s3://{bucket}/folder/Pneumonia/p4_a.png": "pneumonia",
        f"s3://{bucket}/folder/normal/p3_a.png": "normal",
    }
    assert len(included(remote)) == 4
    assert set(remote.loc[remote["label"] == "", "exclusion_reason"]) == {"not a PNG/JPEG file"}


def test_s3_first_bytes_utf16_metadata_and_a_key_without_extension(s3_env):
    """A ranged read tells a key's format (also of an empty object); a UTF-16 manifest reads from S3 too."""
    from components.candidates import ADULT
    from tests.factories import source_manifest

    bucket = new_bucket(s3_env)
    image = png_bytes(8, size=(64, 64))
    drop = Path(s3_env["dir"]) / bucket / "drop"
    write_bytes(drop / "images" / "img001", image)
    write_bytes(drop / "images" / "b.png", png_bytes(9, size=(64, 64)))
    write_bytes(drop / "empty", b"")
    manifest_text = "path,label,age\nimages/img001,normal,50+\nimages/b.png,normal,90 or older\n"
    write_bytes(drop / "manifest.csv", manifest_text.encode("utf-16"))
    settle(s3_env)

    assert storage.read_head(f"s3://{bucket}/drop/images/img001", 8) == image[:8]
    assert storage.read_head(f"s3://{bucket}/drop/empty") == b""
    manifest = source_manifest(f"s3://{bucket}/drop", "multiclass", kind="manifest", name="m")
    assert manifest["age_group"].tolist() == [ADULT, ADULT]
    assert manifest["exclusion_detail"].tolist()[0] == (
        "listed as 'images/img001' without an extension; expected a PNG or JPEG file (.png, .jpg, .jpeg); "
        "found a PNG image at images/img001"
    )
    assert manifest["exclusion_reason"].tolist()[1] == ""

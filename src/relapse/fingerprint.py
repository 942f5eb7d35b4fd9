"""Content fingerprints of local inputs (a model folder, a dataset snapshot), so that a folder
re-saved or edited in place at the same path is noticed.

Snakemake reruns a job when its `params` change (the `params` rerun trigger, on by default), but
it never looks inside a source that is not one of its own outputs. The rules that read a local
source therefore carry its fingerprint as a parameter: a change of content changes the parameter
and reruns the job and everything downstream; touching a file without changing it does not.

A fingerprint covers every file below the folder: relative name, size and the SHA-256 of its
bytes. Hashing a 13 GB reference on every dry run would cost minutes, so each file's hash is
cached under its (path, size, mtime, inode): a file is hashed again only when one of those moved.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

CACHE = Path(".snakemake") / "relapse" / "fingerprints.json"
CHUNK = 1 << 20
# Folders a hub snapshot or an editor leaves beside the content; none of it is read as data.
SKIP_DIRS = {".git", ".cache", "__pycache__", ".ipynb_checkpoints"}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    found = []
    for folder, dirs, names in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        found += [Path(folder) / n for n in sorted(names)]
    return found


def _load_cache(cache: Path | None) -> dict:
    if cache is None or not cache.exists():
        return {}
    try:
        return json.loads(cache.read_text())
    except (OSError, ValueError):
        return {}     # a damaged cache only costs a re-hash


def _save_cache(cache: Path, entries: dict) -> None:
    from relapse.io import write_json

    try:
        write_json(cache, entries)
    except OSError:
        pass          # a read-only work directory: fingerprints stay correct, only slower


def _cached_sha256(file: Path, entries: dict) -> tuple[str, bool]:
    """(SHA-256 of `file`, whether it was computed now): from `entries` while the file's size,
    mtime and inode are those recorded there; `entries` gets the fresh one."""
    st = file.stat()
    key, stamp = str(file.resolve()), [st.st_size, st.st_mtime_ns, st.st_ino]
    known = entries.get(key)
    if known is not None and known[0] == stamp:
        return known[1], False
    entries[key] = [stamp, file_sha256(file)]
    return entries[key][1], True


def fingerprint(path: str | os.PathLike, cache: str | os.PathLike | None = CACHE) -> dict:
    """{"sha256": digest of the whole content, "files": n, "bytes": total} of a file or folder.

    The digest changes when any file's name (relative to `path`), size or bytes change, and when a
    file appears or goes; it does not change when only a modification time does."""
    root = Path(path).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"{path}: no such file or folder to fingerprint")
    cache = Path(cache) if cache is not None else None
    entries = _load_cache(cache)
    whole = hashlib.sha256()
    files = _files(root)
    total, dirty = 0, False
    for file in files:
        digest, fresh = _cached_sha256(file, entries)
        dirty |= fresh
        size = file.stat().st_size
        name = file.name if root.is_file() else file.relative_to(root).as_posix()
        whole.update(f"{name}\0{size}\0{digest}\n".encode())
        total += size
    if dirty and cache is not None:
        _save_cache(cache, entries)
    return {"sha256": whole.hexdigest(), "files": len(files), "bytes": total}


def local_fingerprint(source: str | None, cache: str | os.PathLike | None = CACHE) -> str:
    """The digest of `source` when it is a local file or folder; '' for a hub id (its revision
    is what pins it) or no source."""
    if not source or not Path(source).expanduser().exists():
        return ""
    return fingerprint(source, cache)["sha256"]


def weight_hashes(folder: str | os.PathLike, pattern: str = "model*.safetensors",
                  cache: str | os.PathLike | None = CACHE) -> dict[str, str]:
    """name -> SHA-256 of the folder's files matching `pattern`, through the hash cache (the
    fingerprint of a local reference has hashed them already)."""
    entries = _load_cache(Path(cache) if cache is not None else None)
    return {file.name: _cached_sha256(file, entries)[0]
            for file in sorted(Path(folder).expanduser().glob(pattern))}

"""Downloads for users with internet: fetched once into ghoul's cache, with a progress bar and a checksum.

Every caller also accepts a local path, and nothing downloads when one is given.
"""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from ghoul.errors import GhoulError
from ghoul.files import create_beside


def cache_dir() -> Path:
    """ghoul's download cache: $XDG_CACHE_HOME/ghoul, else ~/.cache/ghoul."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ghoul"


def download(url: str, dest: Path, sha256: str | None = None, hint: str = "download it yourself") -> Path:
    """Fetch `url` to `dest` once; the file appears only when complete and, given `sha256`, checked. Safe when
    several processes (torchrun's ranks, nodes sharing a cache) fetch the same file: each writes its own temporary
    file and renames it into place, and a file another one put there first is taken as it is."""
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp, fd = create_beside(dest, lambda p: os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # its own name
    digest = hashlib.sha256()
    try:
        with open(fd, "wb") as f, urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {dest.name}", file=sys.stderr) as bar:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if sha256 is not None and digest.hexdigest() != sha256:
            raise GhoulError(f"{url} has sha256 {digest.hexdigest()}, expected {sha256}: the download is damaged")
        try:
            os.replace(tmp, dest)  # atomic: readers see no file or the whole file
        except OSError:
            if not dest.is_file():  # Windows refuses to replace a file another process has open
                raise
    except (urllib.error.URLError, OSError) as e:
        raise GhoulError(f"could not download {url} ({e}); {hint}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return dest

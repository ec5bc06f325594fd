"""SHA-256 over ``csrc/``: which CUDA sources a build compiled (standard library only: setup.py loads it by path)."""
from __future__ import annotations

import glob
import hashlib
import os


def csrc_digest(root: str) -> str:
    """Digest of the names and bytes of every file under ``root/csrc``."""
    h = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(root, "csrc", "**", "*"), recursive=True)):
        if os.path.isfile(path):
            h.update(os.path.relpath(path, root).replace(os.sep, "/").encode() + b"\0")
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()

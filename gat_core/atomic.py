"""Atomic file writes, the one implementation every layer uses (torch-free: the analysis imports it too)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomic(path: Path | str, data: bytes | str | Callable[[BinaryIO], object]) -> Path:
    """Write `data` to `path` through a temporary file in the same folder and a rename, so that neither a
    reader nor a crash ever sees half a file.  `data` is bytes, text (UTF-8), or a function that writes into
    the open binary file (`lambda f: torch.save(obj, f)`, `lambda f: np.save(f, array)`).  Creates the folder;
    the temporary file is removed if writing fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")  # unique per writer
    try:
        with open(tmp, "xb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path

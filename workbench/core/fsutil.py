"""Write a folder atomically: build it under a temporary name, then rename it into place."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from workbench.core.errors import InputError


@contextlib.contextmanager
def atomic_dir(out: str | Path, *, overwrite: bool = False):
    """Yield a temporary folder beside `out`; on success it is renamed to `out`.

    On any exception the temporary folder is removed, so `out` is either absent or complete.

    Example:
        >>> with atomic_dir("/tmp/example-out", overwrite=True) as tmp:  # doctest: +SKIP
        ...     (tmp / "a.txt").write_text("hi")
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError("output folder already exists; choose another --out or remove it", file=out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    # mkdtemp makes the folder private (0700); the result is ordinary output, so open it up.
    os.chmod(tmp, 0o755)
    try:
        yield tmp
        if out.exists():
            # Replace: move the old folder aside first so a crash never leaves neither.
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            old.rmdir()
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

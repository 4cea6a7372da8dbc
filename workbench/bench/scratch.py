"""A session in a throw-away workspace: the benchmarks drive editors the way a user does
(`Workbench.edit`, `undo`), and the folder is removed afterwards unless one is given.

Example:
    >>> with scratch_session(None) as wb:                    # doctest: +SKIP
    ...     event = wb.edit("ft", requests[:1], seed=0)
"""
from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path


@contextlib.contextmanager
def scratch_session(model_dir, workspace=None):
    """`Workbench(model_dir, workspace)`; without `workspace`, a temporary one, deleted at the end."""
    from workbench.editing.session import Workbench
    with contextlib.ExitStack() as stack:
        if workspace is None:
            workspace = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="wb-bench-"))) / "ws"
        wb = Workbench(model_dir, workspace, author="workbench bench")
        stack.callback(wb.close)
        yield wb

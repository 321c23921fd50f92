"""Other CPython versions this machine has, for tests that prove the lock on each of them."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def find_python(minor: int) -> str | None:
    """A working python3.X: on PATH, or one pyenv installed (its shim fails when not selected)."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [shutil.which(f"python3.{minor}"),
                  *map(str, sorted(pyenv.glob(f"3.{minor}.*/bin/python3.{minor}")))]
    for candidate in filter(None, candidates):
        if subprocess.run([candidate, "-c", ""], capture_output=True).returncode == 0:
            return candidate
    return None

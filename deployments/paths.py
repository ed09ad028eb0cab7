"""Paths in configs are relative to the project root.

Serve builds applications and runs replicas in worker processes whose working
directory is not the caller's, so a relative path is anchored here, never at
the current directory.
"""
from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def project_path(path: str | Path) -> Path:
    path = Path(path)
    return path if path.is_absolute() else PROJECT_ROOT / path

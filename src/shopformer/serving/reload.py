"""Where ``POST /v1/admin/reload`` may load from: a run directory under the reload root.

The requested path (relative to the root, or absolute) is normalised lexically and checked
against the root, then resolved (symlinks) and checked again. Every refusal outside the root is
the same 403 whatever exists there, and answers never show absolute paths: a run directory is
shown relative to the root.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import HTTPException

OUTSIDE = "run_dir must name a run directory under the server's reload root"
MISSING = "no run directory at run_dir under the reload root"


def _error(status: int, msg: str, kind: str) -> HTTPException:
    return HTTPException(status, [{"loc": ["body", "run_dir"], "msg": msg, "type": kind}])


def shown_path(path: Path, root: Path | None) -> str:
    """``path`` relative to ``root`` when under it, else its last component: never absolute."""
    if root is not None and path.is_relative_to(root):
        rel = path.relative_to(root).as_posix()
        return rel if rel != "." else "."
    return path.name


def resolve_run_dir(raw: str, root: Path | None) -> tuple[Path, str]:
    """(resolved path, shown path) of a requested run directory; raises 403 / 404 HTTP errors."""
    if root is None:
        raise _error(403, "reload is disabled: the server has no reload root (SHOPFORMER_RELOAD_ROOT)", "forbidden")
    try:
        lexical = Path(os.path.normpath(root / raw))  # an absolute raw replaces the root
        if not lexical.is_relative_to(root):
            raise _error(403, OUTSIDE, "forbidden_path")
        real = lexical.resolve()
    except (OSError, ValueError, RuntimeError):  # name too long, symlink loop, ...
        raise _error(404, MISSING, "not_found") from None
    if not real.is_relative_to(root):  # a symlink out of the root
        raise _error(403, OUTSIDE, "forbidden_path")
    shown = shown_path(real, root)
    try:
        is_dir = real.is_dir()
    except OSError:
        is_dir = False
    if not is_dir:
        raise _error(404, MISSING, "not_found")
    return real, shown


def scrub(msg: str, real: Path, shown: str) -> str:
    """An artifact error message with the absolute run path replaced by its shown form."""
    return msg.replace(str(real), shown)

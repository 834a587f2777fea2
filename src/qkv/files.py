"""Output files: checked before any work, written whole or not at all.

Every file qkv writes (JSON, HTML, PNG, Markdown) goes through :func:`replacing`: the
content is written to a temporary file in the target's folder, flushed to disk and renamed
onto the target in one step (``os.replace``). A run that fails or is interrupted midway
leaves the previous file as it was and no temporary file behind.

:func:`output_problem` says, before a command loads a model or measures anything, why an
output path could not be written: it tries what the write will do (create an entry in the
folder), so it holds for root too, and for folders such as ``/proc`` and ``/sys`` whose
permission bits say "writable" to root.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["output_problem", "outputs_problem", "replacing", "save_figure", "write_bytes", "write_text"]


def _new_file_mode() -> int:
    """The permissions a plain ``open(path, "w")`` would give a new file (0o666 less the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Write ``path`` atomically: yield a temporary path beside it, then rename it onto ``path``.

    Missing parent folders are created. The temporary file keeps ``path``'s suffix (so
    ``savefig`` picks the format from the name) and is hidden (``.name.XXXX.tmp.png``). When
    the ``with`` block raises (KeyboardInterrupt included), the temporary file is removed
    and ``path`` is left as it was. The finished file gets the permissions of the one it
    replaces, or those a new file would get.

    >>> with replacing("report.json") as tmp:  # doctest: +SKIP
    ...     tmp.write_text(text)
    """
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        with open(temporary, "rb+") as written:  # on disk before the rename: never a renamed empty file
            os.fsync(written.fileno())
        os.chmod(temporary, path.stat().st_mode & 0o7777 if path.exists() else _new_file_mode())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`replacing`); return the path."""
    with replacing(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path).expanduser()


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`replacing`); return the path."""
    with replacing(path) as temporary:
        temporary.write_bytes(data)
    return Path(path).expanduser()


def save_figure(figure, path: str | Path, **savefig_options) -> Path:
    """``figure.savefig(path, **savefig_options)`` atomically (:func:`replacing`); return the path.

    ``figure``: a matplotlib Figure; the format follows ``path``'s suffix, as in savefig.
    """
    with replacing(path) as temporary:
        figure.savefig(temporary, **savefig_options)
    return Path(path).expanduser()


def _can_create_in(folder: Path) -> str | None:
    """None if a file can be created in the existing ``folder``, else the system's reason."""
    try:
        handle, name = tempfile.mkstemp(dir=folder, prefix=".qkv-write-check.")
    except OSError as err:
        return err.strerror or str(err)
    os.close(handle)
    os.unlink(name)
    return None


def output_problem(option: str, path: str | Path, kind: str = "file", example: str | None = None) -> str | None:
    """Why ``path``, given as ``option``, cannot be written, in one line; None if it can.

    Args:
        option: the command-line option, named in the message (``"--json"``).
        path: the path as the user gave it.
        kind: ``"file"`` (the path is a file to write) or ``"folder"`` (files go inside it).
        example: a file name for the message when a folder is given for a file (default:
            ``report.json`` for ``--json``, ``report.html`` for ``--html``).

    Folders that do not exist yet are fine when they can be created: the check creates a
    file in the deepest folder that exists and removes it again, and creates nothing else.
    """
    if kind not in ("file", "folder"):
        raise ValueError(f"kind must be 'file' or 'folder'; got {kind!r}")
    target = Path(path).expanduser()
    if kind == "file" and target.is_dir():
        example = example or {"--json": "report.json", "--html": "report.html"}.get(option, "output")
        return f"{option} {path}: this is a folder; give a file path such as {target / example}"
    if kind == "folder" and target.exists() and not target.is_dir():
        return f"{option} {path}: this is a file; give a folder for the output files"
    existing = target if kind == "folder" else target.parent
    existing = Path(os.path.abspath(existing))
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{option} {path}: cannot create a folder inside {existing}, which is a file; choose another path"
    reason = _can_create_in(existing)
    if reason is not None:
        return f"{option} {path}: cannot create files in {existing} ({reason}); choose another path"
    return None


def outputs_problem(outputs: Iterable[tuple[str, str | Path | None, str]]) -> str | None:
    """The first problem :func:`output_problem` finds among ``(option, path, kind)`` triples
    (a ``None`` path, an option not given, is skipped); None when every path can be written."""
    for option, path, kind in outputs:
        problem = None if path is None else output_problem(option, path, kind)
        if problem:
            return problem
    return None

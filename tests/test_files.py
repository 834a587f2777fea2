"""qkv.files: output paths checked before work, files written whole or not at all."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from qkv.files import output_problem, outputs_problem, replacing, save_figure, write_text

OLD = b'{"previous": "a good result", "numbers": [1, 2, 3]}\n'


def leftovers(folder: Path) -> list[str]:
    """Every file in ``folder`` but the target: temporary files that a write left behind."""
    return sorted(p.name for p in folder.iterdir() if p.name != "result.json")


def test_write_replaces_the_file_and_leaves_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "deeper" / "result.json"  # a missing folder is created
    write_text(target, "first")
    write_text(target, "second, longer than the first")
    assert target.read_text() == "second, longer than the first"
    assert leftovers(target.parent) == []


@pytest.mark.parametrize("error", [KeyboardInterrupt, OSError(28, "No space left on device"), ValueError])
def test_a_write_that_fails_midway_leaves_the_old_file_intact(tmp_path: Path, error: BaseException) -> None:
    target = tmp_path / "result.json"
    target.write_bytes(OLD)
    expected = type(error) if isinstance(error, BaseException) else error
    with pytest.raises(expected), replacing(target) as temporary, open(temporary, "w") as half:
        half.write('{"new": [1, 2')  # half a JSON document, then the failure
        half.flush()
        raise error
    assert target.read_bytes() == OLD
    assert leftovers(tmp_path) == []


def test_a_failing_flush_leaves_the_old_file_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "result.json"
    target.write_bytes(OLD)

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_text(target, '{"new": "result"}')
    assert target.read_bytes() == OLD
    assert leftovers(tmp_path) == []


def test_a_figure_that_fails_to_draw_leaves_the_old_png(tmp_path: Path) -> None:
    from matplotlib.figure import Figure

    target = tmp_path / "result.png"
    figure = Figure()
    figure.add_subplot().plot([0, 1], [1, 0])
    save_figure(figure, target, dpi=50)
    good = target.read_bytes()
    assert good.startswith(b"\x89PNG")

    class Broken:  # writes part of a PNG, then fails, as an interrupted savefig would
        def savefig(self, path, **options):
            Path(path).write_bytes(good[:100])
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        save_figure(Broken(), target)
    assert target.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["result.png"]


def test_permissions_are_those_of_a_plain_write(tmp_path: Path) -> None:
    plain, atomic = tmp_path / "plain.txt", tmp_path / "atomic.txt"
    plain.write_text("x")
    write_text(atomic, "x")
    assert stat.S_IMODE(atomic.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
    os.chmod(atomic, 0o640)
    write_text(atomic, "y")  # a replaced file keeps its own permissions
    assert stat.S_IMODE(atomic.stat().st_mode) == 0o640


@pytest.mark.parametrize(("path", "kind", "expected"), [
    ("/proc/x/y.json", "file", "--json /proc/x/y.json: cannot create files in /proc"),
    ("/proc/self/y.json", "file", "--json /proc/self/y.json: cannot create files in /proc/self"),
    ("/sys/x.json", "file", "--json /sys/x.json: cannot create files in /sys"),
    ("/sys/figures", "folder", "--json /sys/figures: cannot create files in /sys"),
])
def test_system_folders_are_refused_even_for_root(path: str, kind: str, expected: str) -> None:
    if not Path("/" + path.split("/")[1]).is_dir():
        pytest.skip(f"no /{path.split('/')[1]} on this system")
    problem = output_problem("--json", path, kind)
    assert problem is not None and problem.startswith(expected) and "\n" not in problem


def test_files_and_folders_in_the_wrong_place(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    assert "cannot create a folder inside" in output_problem("--json", tmp_path / "a-file" / "x.json")
    assert "this is a file" in output_problem("--out", tmp_path / "a-file", "folder")
    assert f"such as {tmp_path / 'report.html'}" in output_problem("--html", tmp_path)


def test_a_writable_path_is_accepted_and_nothing_is_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert outputs_problem([("--json", "new/deeper/r.json", "file"), ("--out", "figures", "folder"),
                            ("--html", None, "file")]) is None
    assert list(tmp_path.iterdir()) == []  # the check leaves no file or folder behind


def test_the_first_problem_is_named(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    problem = outputs_problem([("--json", tmp_path / "ok.json", "file"), ("--out", tmp_path / "a-file", "folder")])
    assert problem.startswith("--out ")


def test_a_file_size_limit_midway_leaves_the_old_file_intact(tmp_path: Path) -> None:
    """As ``(ulimit -f 1; qkv ... --json X)``: the write fails with EFBIG after the first KiB."""
    import resource
    import subprocess
    import sys

    target = tmp_path / "result.json"
    target.write_bytes(OLD)
    code = f"from qkv.files import write_text; write_text({str(target)!r}, '[' + '1, ' * 5000 + '1]')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024)))
    assert done.returncode != 0 and "File too large" in done.stderr
    assert target.read_bytes() == OLD
    assert leftovers(tmp_path) == []

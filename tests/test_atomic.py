"""Atomic output (ls_plugins/atomic.py): file mode from the umask, fsync, no debris on failure."""
import os
import stat

import pytest

from ls_plugins import atomic


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o027
    os.umask(old)


@pytest.mark.parametrize("existing", [False, True], ids=["new-file", "replacing"])
def test_mode_is_0666_masked_by_the_umask(tmp_path, umask_027, existing):
    target = tmp_path / "out.json"
    if existing:
        target.write_text("old")
        target.chmod(0o600)
    atomic.write_json(str(target), {"a": 1})
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask_027 == 0o640
    assert target.read_text() == '{\n  "a": 1\n}\n'


def test_the_process_umask_is_never_changed(tmp_path, monkeypatch):
    """Setting the umask (even to read it) races with threads creating files meanwhile."""
    calls = []
    real_umask = os.umask
    monkeypatch.setattr(os, "umask", lambda mask: calls.append(mask) or real_umask(mask))
    atomic.write_text(str(tmp_path / "a.txt"), "x")
    assert calls == []


def test_file_synced_before_rename_and_directory_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    atomic.write_text(str(tmp_path / "b.txt"), "content")
    assert [kind for kind, _ in events] == ["fsync", "replace", "fsync"]
    synced_file, synced_dir = events[0][1], events[2][1]
    assert os.path.basename(synced_file).startswith(".tmp-")  # the temporary file, before rename
    assert os.path.dirname(synced_file) == str(tmp_path) == synced_dir
    assert (tmp_path / "b.txt").read_text() == "content"


def test_failing_writer_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "c.txt"
    target.write_text("old content")

    def half_write(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic.atomic_write(str(target), half_write)
    assert target.read_text() == "old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt"]


def test_interrupted_writer_leaves_no_file(tmp_path):
    def interrupted(tmp):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic.atomic_write(str(tmp_path / "d.png"), interrupted)
    assert list(tmp_path.iterdir()) == []


def test_temporary_file_keeps_the_extension(tmp_path):
    """Writers that pick the format from the name (savefig, np.save) see the target's suffix."""
    seen = []
    atomic.atomic_write(str(tmp_path / "fig.png"), lambda tmp: (seen.append(tmp), open(tmp, "wb").close()))
    assert seen[0].endswith("-fig.png") and os.path.dirname(seen[0]) == str(tmp_path)

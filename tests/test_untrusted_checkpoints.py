"""Untrusted checkpoints: a pickle that runs code when it is loaded is refused on every path that
reads a checkpoint, the message names the global it asked for, and the code never runs.

The malicious checkpoints are real ``torch.save`` files whose unpickling calls ``open(marker,
"w")`` or ``os.system("touch marker")``; :func:`test_payloads_really_run_code_when_loaded_unsafely`
shows that loading them without safe loading does create the marker.  The command-line tests
run the commands as a user would (subprocesses), so they hold whichever module does the loading.
"""
import dataclasses
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, TINY_TRANSFORMER, command, run

from ls_plugins import checkpoints


class CallOnLoad:
    """Unpickling this object calls ``func(*args)``: what a malicious checkpoint does."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@dataclasses.dataclass
class HarmlessConfig:
    """A plain data class, as a user's own training code might pickle into a checkpoint."""
    size: int = 3


# payload name -> (callable, its arguments given the marker path, the global torch names)
PAYLOADS = {
    "open": (open, lambda marker: (str(marker), "w"), "io.open"),
    "os.system": (os.system, lambda marker: (f"touch {marker}",), "posix.system"),
}


def malicious_checkpoint(directory, payload: str):
    """(checkpoint path, marker path): a fairseq/ls-vision-looking checkpoint whose loading would
    create the marker file."""
    func, arguments, _ = PAYLOADS[payload]
    marker = directory / f"marker-{payload}"
    path = directory / f"evil-{payload}.pt"
    torch.save({"args": None, "model": {}, "state_dict": {}, "num_classes": 10,
                "payload": CallOnLoad(func, arguments(marker))}, path)
    return path, marker


def load_error(obj_or_path) -> BaseException:
    """The exception of ``torch.load(weights_only=True)`` on a path (or on a saved object)."""
    try:
        torch.load(obj_or_path, weights_only=True)
    except Exception as err:  # noqa: BLE001 (whatever torch raises)
        return err
    raise AssertionError("loaded")


def saved(tmp_path, obj, name="c.pt"):
    torch.save(obj, tmp_path / name)
    return tmp_path / name


# -- the message ---------------------------------------------------------------------------------

@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_payloads_really_run_code_when_loaded_unsafely(tmp_path, payload):
    """The marker assertions below can fail: unsafe loading of these files does run the code."""
    path, marker = malicious_checkpoint(tmp_path, payload)
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("func,args,name", [
    (open, ("/tmp/x", "w"), "io.open"),
    (eval, ("1",), "eval"),
    (exec, ("x = 1",), "exec"),
    (os.system, ("true",), "posix.system"),
    # pickle's protocol 2 writes subprocess under its Python 2 name, commands
    (subprocess.Popen, (["true"],), "commands.Popen"),  # a class, yet it runs a program
    (subprocess.check_output, (["true"],), "commands.check_output"),
    (getattr, ("text", "upper"), "getattr"),
    (print, ("x",), "print"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_callables_are_refused_and_never_advised_to_allowlist(tmp_path, func, args, name):
    message = checkpoints.missing_global_message(load_error(saved(tmp_path, CallOnLoad(func, args))))
    assert f"global {name}," in message and message.startswith("refused")
    assert "run code" in message
    assert "add_safe_globals" not in message and "weights_only=False" not in message
    assert "\n" not in message and "\x1b" not in message


def test_data_class_named_with_how_to_allowlist_it_if_trusted(tmp_path):
    message = checkpoints.missing_global_message(load_error(saved(tmp_path, HarmlessConfig())))
    name = f"{HarmlessConfig.__module__}.HarmlessConfig"
    assert f"class {name}" in message and "if you trust this file" in message
    assert f"add_safe_globals([{name}])" in message
    assert "\n" not in message and "\x1b" not in message  # torch's text has ANSI bold codes


def test_other_load_failures_give_torch_informative_line(tmp_path):
    (tmp_path / "random.pt").write_bytes(bytes(range(256)) * 4)
    message = checkpoints.missing_global_message(load_error(tmp_path / "random.pt"))
    assert message.startswith("not a checkpoint that loads safely:") and "Unsupported operand" in message
    assert "weights_only" not in message  # torch's advice to switch safe loading off is dropped
    (tmp_path / "empty.pt").write_bytes(b"")
    assert "EOFError" in checkpoints.missing_global_message(load_error(tmp_path / "empty.pt"))


def test_fairseq_globals_do_not_touch_deprecated_numpy_core():
    """numpy 2 renamed numpy.core to numpy._core (the old name warns and will go away)."""
    code = ("import sys, numpy; from ls_plugins import checkpoints; "
            "checkpoints.fairseq_checkpoint_globals(); "
            "assert 'numpy.core' not in sys.modules or not hasattr(numpy, '_core')")
    result = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c", code],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("module", ["numpy._core.multiarray", "numpy.core.multiarray"],
                         ids=["numpy-2", "numpy-1"])
def test_numpy_scalars_of_fairseq_checkpoints_load_safely(module):
    """fairseq stores e.g. best_loss as a numpy scalar; checkpoints written under numpy 1 name
    its constructor numpy.core.multiarray.scalar, under numpy 2 numpy._core.multiarray.scalar."""
    import io

    import numpy as np

    buffer = io.BytesIO()
    torch.save({"best_loss": np.float64(1.5)}, buffer, _use_new_zipfile_serialization=False)
    written = buffer.getvalue()
    for name in (b"numpy._core.multiarray", b"numpy.core.multiarray"):  # as the other numpy writes it
        written = written.replace(name, module.encode())
    assert module.encode() + b"\nscalar" in written
    loaded = torch.load(io.BytesIO(written), weights_only=True)
    assert loaded == {"best_loss": 1.5} and isinstance(loaded["best_loss"], np.float64)


def test_checkpoints_module_is_torch_only():
    """The vision trainer uses it; it must not bring fairseq in."""
    code = ("import sys; from ls_plugins import checkpoints; "
            "assert 'fairseq' not in sys.modules, 'fairseq imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]


# -- every path that reads a checkpoint ------------------------------------------------------------

def assert_refused(result, marker, global_name, *, ours=True):
    """Refused before any code ran: exit status (2 for our commands), one error line naming the
    global, no traceback, no marker."""
    assert not marker.exists(), "the checkpoint's code ran"
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    if ours:
        assert result.returncode == 2, result.stderr[-3000:]
    else:
        assert result.returncode != 0, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if " error: " in line]
    assert len(errors) == 1, result.stderr[-3000:]
    assert global_name in errors[0] and "refused" in errors[0], errors[0]
    assert "add_safe_globals" not in result.stderr


FAIRSEQ_TRAIN_TINY = [*TINY_TRANSFORMER, "--max-update", "1"]


def test_fairseq_generate_path(bible, tmp_path):
    evil, marker = malicious_checkpoint(tmp_path, "open")
    result = run([command("fairseq-generate"), bible / "bin", "--user-dir", "ls_plugins",
                  "--path", evil, "--cpu", "--gen-subset", "valid", "--beam", "1"], check=False)
    assert_refused(result, marker, "io.open", ours=False)


def test_fairseq_train_restore_file(bible, tmp_path):
    evil, marker = malicious_checkpoint(tmp_path, "os.system")
    result = run([command("fairseq-train"), bible / "bin", "--user-dir", "ls_plugins",
                  *FAIRSEQ_TRAIN_TINY, "--criterion", "smoothed_ce", "--save-dir", tmp_path / "save",
                  "--restore-file", evil], check=False)
    assert_refused(result, marker, "posix.system", ours=False)


def test_distillation_ce_teacher_path(bible, tmp_path):
    evil, marker = malicious_checkpoint(tmp_path, "open")
    result = run([command("fairseq-train"), bible / "bin", "--user-dir", "ls_plugins",
                  *FAIRSEQ_TRAIN_TINY, "--criterion", "distillation_ce", "--teacher-path", evil,
                  "--save-dir", tmp_path / "save"], check=False)
    assert_refused(result, marker, "io.open")


def test_ls_sweep_model(bible, tmp_path):
    evil, marker = malicious_checkpoint(tmp_path, "os.system")
    result = run([command("ls-sweep"), bible / "bin", "--model", f"evil={evil}",
                  "--temperatures", "1", "--gen-subset", "valid", "--cpu",
                  "--output-dir", tmp_path / "sweep"], check=False)
    assert_refused(result, marker, "posix.system")


def test_ls_cache_teacher_teacher_path(bible, tmp_path):
    evil, marker = malicious_checkpoint(tmp_path, "open")
    result = run([command("ls-cache-teacher"), bible / "bin", "--teacher-path", evil,
                  "--split", "valid", "--cpu", "--out", tmp_path / "cache"], check=False)
    assert_refused(result, marker, "io.open")


@pytest.mark.parametrize("option", ["--resume", "--teacher"])
def test_ls_vision_checkpoints(tmp_path, option):
    evil, marker = malicious_checkpoint(tmp_path, "open" if option == "--resume" else "os.system")
    result = run([command("ls-vision"), "--dataset", "digits", "--device", "cpu", "--epochs", "1",
                  "--quiet", "--output-dir", tmp_path / "run", option, evil], check=False)
    assert_refused(result, marker, "io.open" if option == "--resume" else "posix.system")

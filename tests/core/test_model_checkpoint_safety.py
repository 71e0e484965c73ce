"""Checkpoint files that are not checkpoints: refused fast, in one line naming the file, before any network
is built — and a file that would run code when unpickled is reported as unsafe without running it."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dpmesh_core.errors import CheckpointMismatchError, InputError
from dpmesh_core.model import checkpoint as ck


class _Payload:
    """Unpickling this runs ``os.system`` (creating a marker file) — what a malicious checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture()
def bad_files(tmp_path):
    files = {}
    files["empty"] = tmp_path / "empty.pth.tar"
    files["empty"].write_bytes(b"")
    files["random"] = tmp_path / "random.pth.tar"
    files["random"].write_bytes(os.urandom(2048))
    good = tmp_path / "small.pth.tar"
    torch.save({"module.a": torch.zeros(3)}, good)
    files["truncated"] = tmp_path / "truncated.pth.tar"
    files["truncated"].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    marker = tmp_path / "PWNED"
    files["code_zip"] = tmp_path / "code_zip.pth.tar"
    torch.save({"module.a": _Payload(marker)}, files["code_zip"])
    files["code_pickle"] = tmp_path / "code_pickle.pth.tar"
    with open(files["code_pickle"], "wb") as fh:
        pickle.dump({"module.a": _Payload(marker)}, fh, protocol=4)
    files["not_dpmesh"] = good
    return files, marker


@pytest.mark.parametrize("kind,says", [
    ("empty", "empty file"),
    ("random", "not a readable PyTorch checkpoint"),
    ("truncated", "truncated"),
    ("code_zip", "unsafe file, refused: loading it would import posix.system"),
    ("code_pickle", "unsafe file, refused: loading it would import posix.system"),
])
def test_bad_files_are_refused_by_name(bad_files, kind, says):
    files, marker = bad_files
    with pytest.raises(InputError) as e:
        ck.read_state_dict(files[kind])
    msg = str(e.value)
    assert says in msg and files[kind].name in msg
    assert "weights_only" not in msg  # never advise turning the safety off
    assert "\n" not in msg
    assert not marker.exists()  # nothing in the file ran


def test_a_foreign_state_dict_is_refused_before_any_network_is_built(bad_files, monkeypatch):
    files, _ = bad_files
    from dpmesh_core.model import network

    def boom(*a, **k):
        raise AssertionError("a network was built for a file that is not a DPMesh checkpoint")

    monkeypatch.setattr(network, "_build_empty", boom)
    state = ck.read_state_dict(files["not_dpmesh"])
    with pytest.raises(CheckpointMismatchError) as e:
        ck.infer_network_config(state, path=files["not_dpmesh"])
    assert "not an official DPMesh checkpoint" in str(e.value)


def test_cli_refuses_a_code_executing_checkpoint_quickly(bad_files, tmp_path):
    files, marker = bad_files
    err = tmp_path / "stderr.txt"
    with open(err, "w") as fh:
        child = subprocess.Popen([sys.executable, "-m", "dpmesh_core.cli", "convert", str(files["code_zip"]),
                                  str(tmp_path / "out")], stdout=subprocess.DEVNULL, stderr=fh)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own resource usage
    child.returncode = os.waitstatus_to_exitcode(status)
    stderr = err.read_text()
    assert child.returncode == 2, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "unsafe file" in lines[0] and "code_zip.pth.tar" in lines[0], stderr
    assert not marker.exists() and not (tmp_path / "out").exists()
    # no network was built: the child's peak memory stays that of the imports (a built sd15 network is ~5 GB)
    peak_mb = usage.ru_maxrss / 1024
    print(f"refusing the file: peak RSS {peak_mb:.0f} MB")
    assert peak_mb < 2000, peak_mb

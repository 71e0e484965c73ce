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
    status_file = tmp_path / "status.txt"
    # `dpmesh convert FILE OUT` as typed, whose memory high-water mark (VmHWM: this process image's own, from its
    # exec on) is written when it exits. Not the rusage of the child: Linux carries the parent's high-water
    # mark into a vfork+exec child's ru_maxrss (2 GB here late in the whole suite, with nothing built).
    code = ("import atexit, runpy, sys\n"
            f"atexit.register(lambda: open({str(status_file)!r}, 'w').write(open('/proc/self/status').read()))\n"
            f"sys.argv = ['dpmesh', 'convert', {str(files['code_zip'])!r}, {str(tmp_path / 'out')!r}]\n"
            "runpy.run_module('dpmesh_core.cli', run_name='__main__')\n")
    with open(err, "w") as fh:
        child = subprocess.run([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=fh)
    stderr = err.read_text()
    assert child.returncode == 2, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "unsafe file" in lines[0] and "code_zip.pth.tar" in lines[0], stderr
    assert not marker.exists() and not (tmp_path / "out").exists()
    # no network was built: the child's peak memory stays that of the imports (a built sd15 network is ~5 GB)
    hwm = [line for line in status_file.read_text().splitlines() if line.startswith("VmHWM:")][0]
    peak_mb = int(hwm.split()[1]) / 1024  # kB
    print(f"refusing the file: peak RSS {peak_mb:.0f} MB")
    assert peak_mb < 2000, peak_mb

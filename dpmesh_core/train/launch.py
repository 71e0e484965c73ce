"""Starting ``dpmesh train`` on several processes, through Hugging Face Accelerate.

``dpmesh train CONFIG --num-processes N`` re-runs the same command in N processes:

* on a machine with CUDA, or with ``--accelerate-config FILE``: through ``accelerate launch`` (a child
  ``python -m accelerate.commands.launch ... -m dpmesh_core.cli train CONFIG ...``; the file's settings —
  GPUs, machines, mixed precision — are honoured; ``--multi_gpu`` and a free port are chosen when no file is
  given);
* on a CPU-only machine (``accelerate launch`` starts several CPU processes only through MPI): through
  Accelerate's ``notebook_launcher`` (torch elastic, forked processes, the gloo backend).

Each process then builds its ``Accelerator`` from the environment the launcher set (``loop.train``). The
same holds for ``accelerate launch`` and ``torchrun`` started by the user, and for Slurm: ``srun`` around
either of them, or one task per GPU with ``srun dpmesh train CONFIG`` (``adopt_slurm_env`` maps the Slurm
variables onto torch.distributed's).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

log = logging.getLogger(__name__)


def in_launched_process(env: Mapping[str, str] | None = None) -> bool:
    """Whether this process was started by a distributed launcher (torchrun, accelerate launch, ...)."""
    env = os.environ if env is None else env
    return "LOCAL_RANK" in env or int(env.get("WORLD_SIZE", "1") or 1) > 1


def free_port() -> int:
    """A TCP port free on this machine now (for the rendezvous of a local multi-process run)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def first_slurm_host(nodelist: str) -> str:
    """The first host of a Slurm node list: ``gpu[03-05,09],cpu1`` → ``gpu03``; ``a,b`` → ``a``."""
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not m:
        raise ValueError(f"cannot read the Slurm node list {nodelist!r}")
    prefix, ranges = m.group(1), m.group(2)
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def adopt_slurm_env(env: MutableMapping[str, str] | None = None) -> bool:
    """Inside an ``srun`` task with several tasks and no launcher of its own, set RANK / WORLD_SIZE /
    LOCAL_RANK / LOCAL_WORLD_SIZE / MASTER_ADDR / MASTER_PORT from the Slurm variables, so that Accelerate
    joins the tasks into one process group. Returns whether it did. The tasks of a node must see all the
    node's GPUs (``--gpus-per-node``, not ``--gpus-per-task``): task ``SLURM_LOCALID`` takes GPU
    ``SLURM_LOCALID``. MASTER_PORT defaults to 29500 (set it to run several jobs on one node)."""
    env = os.environ if env is None else env
    if in_launched_process(env) or int(env.get("SLURM_NTASKS", "1") or 1) < 2 or "SLURM_PROCID" not in env:
        return False
    env["RANK"] = env["SLURM_PROCID"]
    env["WORLD_SIZE"] = env["SLURM_NTASKS"]
    env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    per_node = env.get("SLURM_NTASKS_PER_NODE", "").split("(")[0]
    if per_node.isdigit():
        env["LOCAL_WORLD_SIZE"] = per_node
    if "MASTER_ADDR" not in env:
        env["MASTER_ADDR"] = first_slurm_host(env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or
                                              "127.0.0.1")
    env.setdefault("MASTER_PORT", "29500")
    return True


def accelerate_command(child_args: list[str], num_processes: int | None, config_file: str | None,
                       mixed_precision: str | None, cuda: bool) -> list[str]:
    """The ``accelerate launch`` command line that runs ``dpmesh_core.cli <child_args>`` in every process."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if config_file:
        cmd += ["--config_file", str(config_file)]
    else:
        if cuda and (num_processes or 1) > 1:
            cmd += ["--multi_gpu"]
        cmd += ["--num_machines", "1", "--dynamo_backend", "no", "--main_process_port", str(free_port())]
    if num_processes:
        cmd += ["--num_processes", str(num_processes)]
    if mixed_precision or not config_file:  # a config file's own setting holds unless the flag is given
        cmd += ["--mixed_precision", mixed_precision or "no"]
    return [*cmd, "-m", "dpmesh_core.cli", *child_args]


def launch_forked(worker: Callable[[], int], num_processes: int) -> int:
    """Run ``worker()`` in ``num_processes`` forked processes joined by the gloo backend (Accelerate's
    ``notebook_launcher``); the worst exit code of the processes."""
    from accelerate import notebook_launcher
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    def run() -> None:
        sys.stdout = sys.__stdout__  # the launcher's own messages go to stderr (see below), events to stdout
        code = worker()
        sys.stdout.flush()
        if code:
            raise SystemExit(code)

    real_stdout = sys.stdout
    sys.stdout = sys.stderr  # "Launching training on 2 CPUs." must not mix with --json events
    try:
        notebook_launcher(run, (), num_processes=num_processes, use_port=str(free_port()))
    except ChildFailedError as e:
        codes = [f.exitcode for f in e.failures.values()]
        return max((c for c in codes if c and c > 0), default=1)
    finally:
        sys.stdout = real_stdout
    return 0


def launch(child_args: list[str], worker: Callable[[], int], num_processes: int | None,
           config_file: str | None = None, mixed_precision: str | None = None) -> int:
    """Start the training in several processes (see module docstring); returns the exit code."""
    import torch

    cuda = torch.cuda.is_available()
    n = num_processes
    if config_file or cuda:
        cmd = accelerate_command(child_args, n, config_file, mixed_precision, cuda)
        log.info("launching: %s", " ".join(cmd))
        return subprocess.call(cmd)
    if not n or n < 2:
        return worker()
    return launch_forked(worker, n)


def child_argv(args: Any) -> list[str]:
    """The ``dpmesh`` arguments every launched process runs (the launcher's own options removed)."""
    out = ["-v"] * int(getattr(args, "verbose", 0) or 0)
    out += ["train", str(args.config)]
    for s in args.set or []:
        out += ["--set", s]
    if args.resume:
        out.append("--resume")
    if args.mixed_precision:
        out += ["--mixed-precision", args.mixed_precision]
    if args.grad_accum:
        out += ["--grad-accum", str(args.grad_accum)]
    if args.json:
        out.append("--json")
    return out

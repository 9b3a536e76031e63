"""One training command per workspace at a time, and who holds the workspace.

An advisory `flock` on `<workspace>/train.lock`: the kernel drops it when the process dies,
so a killed command never leaves the workspace locked. The holder writes a small JSON
record into the file (pid, host, command line, working folder, start time); it stays there
after the holder ends, so a stage left `running` by a killed command can be told apart
from one that runs (`lock_state`) and the command that resumes it can be printed
(`stage_state`).

No torch here: `stages` and `show-task` use it and must start fast.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from unimmad_cl.errors import UserError

LOCK_FILE = "train.lock"
# A reader probing the lock (`stages`) holds it for microseconds; a command that starts at
# that moment retries instead of reporting the workspace busy.
RETRIES = 20
RETRY_SECONDS = 0.05
# Flags that must not be repeated when a command is resumed.
NOT_REPEATED = {"--restart"}
# The commands that take the lock and resume an interrupted stage when run again.
RESUMING_COMMANDS = {"train-base", "train-incremental", "demo"}


@dataclass(frozen=True)
class LockHolder:
    """What the (current or last) holder of the workspace lock wrote about itself."""

    pid: int | None
    host: str | None = None
    argv: tuple[str, ...] = ()
    cwd: str | None = None
    started: float | None = None  # time.time() when it took the lock
    world_size: int = 1  # processes under torchrun


@dataclass(frozen=True)
class LockState:
    held: bool  # a live process holds the lock now
    holder: LockHolder | None  # the current holder, or the last one (None: never locked)


def _holder_record() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "argv": list(sys.argv),
        "cwd": os.getcwd(),
        "started": time.time(),
        "world_size": int(os.environ.get("WORLD_SIZE", "1") or 1),
    }


def _parse_holder(text: str) -> LockHolder | None:
    text = text.strip()
    if not text:
        return None
    if text.isdigit():  # written by an older version: the pid only
        return LockHolder(pid=int(text))
    try:
        record = json.loads(text)
        return LockHolder(
            pid=record.get("pid"), host=record.get("host"), argv=tuple(record.get("argv") or ()),
            cwd=record.get("cwd"), started=record.get("started"), world_size=int(record.get("world_size") or 1),
        )
    except (ValueError, TypeError, AttributeError):
        return None  # being rewritten right now, or damaged: unknown


@contextmanager
def workspace_lock(workspace: Path):
    workspace.mkdir(parents=True, exist_ok=True)
    path = workspace / LOCK_FILE
    fh = open(path, "a+")
    try:
        for attempt in range(RETRIES):
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == RETRIES - 1:
                    fh.seek(0)
                    holder = _parse_holder(fh.read())
                    pid = holder.pid if holder and holder.pid is not None else "unknown"
                    raise UserError(
                        f"workspace {workspace} is busy: another training command (pid {pid}) is running; "
                        "wait for it to finish"
                    ) from None
                time.sleep(RETRY_SECONDS)
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps(_holder_record()))
        fh.flush()
        yield
    finally:
        fh.close()


def lock_state(workspace: Path) -> LockState:
    """Whether a live process holds the workspace lock, and the record of the (last) holder.

    Probes with a shared, non-blocking flock that is released at once (a training command
    starting in that instant retries, see `workspace_lock`). Never creates the file."""
    path = Path(workspace) / LOCK_FILE
    try:
        fh = open(path)
    except FileNotFoundError:
        return LockState(held=False, holder=None)
    except OSError:
        return LockState(held=False, holder=None)
    with fh:
        holder = _parse_holder(fh.read())
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return LockState(held=True, holder=holder)
        fcntl.flock(fh, fcntl.LOCK_UN)
    return LockState(held=False, holder=holder)


# --------------------------------------------------------------------------- stage states


@dataclass(frozen=True)
class StageState:
    """How `stages` and `show-task` present a stage: the status and, for an unfinished stage
    that the next training command would pick up, the command that resumes it."""

    status: str  # running | interrupted | failed | completed
    resume: str | None = None
    note: str | None = None  # one line: why, and what the resume does


def _started_epoch(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:  # SQLite hands back the stored UTC time without its zone
            value = value.replace(tzinfo=timezone.utc)
        return value.timestamp()
    return float(value)


def resume_command(stage, holder: LockHolder | None, workspace: Path) -> str:
    """The command line that resumes `stage`: the holder's own command line when the
    holder started it (the lock record is from then), else one built from the stage record."""
    started = _started_epoch(getattr(stage, "started_at", None))
    if (
        holder is not None
        and holder.argv
        and holder.started is not None
        and (started is None or holder.started <= started + 1.0)
        and Path(holder.argv[0]).name in ("unimmad-cl", "cli.py")
        and any(a in RESUMING_COMMANDS for a in holder.argv[1:])
    ):
        args = [a for a in holder.argv[1:] if a not in NOT_REPEATED]
        program = "unimmad-cl"
        if holder.world_size > 1:
            program = f"torchrun --nproc_per_node={holder.world_size} $(which unimmad-cl)"
        line = program + " " + shlex.join(args)
        if holder.cwd and holder.cwd != os.getcwd():
            line = f"cd {shlex.quote(holder.cwd)} && {line}"
        return line
    command = "train-base" if stage.kind == "base" else "train-incremental"
    return f"unimmad-cl --workspace {shlex.quote(str(workspace))} {command} --tasks {','.join(stage.tasks)} (with the flags it was started with)"


def stage_states(workspace: Path, stages) -> dict[int, StageState]:
    """The presented state of each stage (`registry.store.StageInfo`s, in number order).

    A stage recorded `running` runs only while a process holds the workspace lock; when the
    lock is free its process is gone: `interrupted`. A stage marked failed because it was
    interrupted (Ctrl-C, SIGTERM, found dead by the next command) is `interrupted` too. Only
    the latest unfinished stage with no completed stage after it is picked up again by the
    same command (resumed from its last epoch checkpoint), so only it gets a resume command.
    """
    stages = list(stages)
    lock = None
    states: dict[int, StageState] = {}
    last_completed = max((s.number for s in stages if s.status == "completed"), default=-1)
    unfinished = [s for s in stages if s.status != "completed"]
    resumable = unfinished[-1].number if unfinished and unfinished[-1].number > last_completed else None
    for stage in stages:
        if stage.status == "completed":
            states[stage.number] = StageState("completed")
            continue
        if stage.status == "running":
            if lock is None:
                lock = lock_state(workspace)
            if lock.held or lock.holder is None:
                # Held: it runs. No lock file: it runs elsewhere (a registry shared with
                # another workspace); this workspace cannot tell.
                pid = lock.holder.pid if lock.held and lock.holder else None
                states[stage.number] = StageState("running", note=f"pid {pid}" if pid else None)
                continue
            status = "interrupted"
            why = "its process ended before the stage finished"
        else:
            error = stage.error or ""
            status = "interrupted" if error.startswith("interrupted") else "failed"
            why = error or "failed"
        resume = None
        if stage.number == resumable:
            if lock is None:
                lock = lock_state(workspace)
            resume = resume_command(stage, lock.holder, workspace)
        states[stage.number] = StageState(status, resume, why)
    return states

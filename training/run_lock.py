# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
One run per output directory: [`hold_output_dir`] takes the directory's lock (`filelock`, an OS file lock on
`.run.lock` that the operating system releases when the holding process ends, however it ends: a crashed or killed
run never leaves it stuck) for as long as the run lasts, and records who holds it in `.run.holder.json`, so that a
second run is refused at start with the holder named. Taking the lock also proves the directory writable before
anything is loaded.
"""

import contextlib
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from filelock import FileLock, Timeout


LOCK_NAME = ".run.lock"
HOLDER_NAME = ".run.holder.json"


class OutputDirUnavailable(OSError):
    """The output directory cannot be had: another run holds it, or it cannot be written to."""


def ensure_writable_dir(directory: str, flag: str, keep: bool = True) -> None:
    """
    Proves `directory` writable (creating it, writing and removing a probe file), or raises naming `flag`. Unless
    `keep`, the directories this created are removed again: a command refused later leaves nothing behind.
    """
    created = None
    parent = os.path.abspath(directory)
    while not os.path.exists(parent):
        created, parent = parent, os.path.dirname(parent)
    probe = os.path.join(directory, f".write-probe-{os.getpid()}")
    try:
        os.makedirs(directory, exist_ok=True)
        with open(probe, "w", encoding="utf-8") as file:
            file.write("probe")
        os.remove(probe)
    except OSError as error:
        raise OSError(
            f"{flag} {directory} cannot be written to ({error.strerror or error}): choose a writable {flag}, or make "
            "room there, before the run starts."
        ) from error
    if created is not None and not keep:
        shutil.rmtree(created)


def holder_description(output_dir: str) -> str:
    """Who holds `output_dir`'s lock, from its holder file."""
    try:
        with open(os.path.join(output_dir, HOLDER_NAME), encoding="utf-8") as file:
            holder = json.load(file)
    except (OSError, ValueError):
        return "a run that has not recorded itself yet"
    return f"process {holder['pid']} on {holder['host']}, started {holder['started']} ({holder['command']})"


@contextlib.contextmanager
def hold_output_dir(accelerator: Accelerator, output_dir: str) -> Iterator[None]:
    """
    Holds `output_dir` for the run inside the `with` block (the main process takes the lock; every process raises the
    same [`OutputDirUnavailable`] when it cannot be had).
    """
    lock, problem = None, None
    if accelerator.is_main_process:
        try:
            ensure_writable_dir(output_dir, "--output_dir")
            lock = FileLock(os.path.join(output_dir, LOCK_NAME))
            lock.acquire(timeout=0)
        except Timeout:
            problem = (
                f"The output directory {output_dir} is in use by another run: {holder_description(output_dir)}. "
                "Wait for it to end, or choose another --output_dir."
            )
        except OSError as error:
            problem = str(error)
        else:
            record_holder(output_dir)
    problem = broadcast_object_list([problem])[0] if accelerator.num_processes > 1 else problem
    if problem is not None:
        raise OutputDirUnavailable(problem)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def record_holder(output_dir: str) -> None:
    """Writes the holder file: this process, its host, when it started and its command line."""
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv),
    }
    with open(os.path.join(output_dir, HOLDER_NAME), "w", encoding="utf-8") as file:
        json.dump(holder, file)

"""
A run owns its output directory and its schedule: a second run into the directory is refused while the first holds
it (and a crashed holder leaves no stale lock); SIGTERM and SIGINT stop a run with a checkpoint that resumes to the
uninterrupted result, on one process and on two; a resume that would change the data order or the schedule is
refused by setting.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

import train_accelerate
import training.loop
from tiny_runs import CONFIGS, REPO_ROOT, assert_same_weights, saved_weights, tiny_args
from training import train
from training.checkpointing import latest_checkpoint
from training.integrity import CheckpointError
from training.preemption import INTERRUPTED_EXIT_STATUS, TrainingInterrupted
from training.run_lock import HOLDER_NAME, OutputDirUnavailable


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
TINY_FLAGS = [
    "--config", str(CONFIGS / "tiny_shapes.yaml"), "--use_cpu", "--max_train_samples", "48", "--max_eval_samples",
    "4", "--per_device_train_batch_size", "4", "--eval_strategy", "no", "--report_to", "none", "--save_steps", "0",
    "--conversations", "none", "--eval_vqa", "none", "--eval_pope", "none",
]  # fmt: skip


def wait_for(condition, process: subprocess.Popen, timeout: float = 120.0) -> None:
    """Polls `condition` until it holds; fails with `process`'s output if the process ends or time runs out first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            output = process.communicate()[0]
            pytest.fail(f"gave up waiting (exit {process.returncode}):\n{output[-3000:]}")
        time.sleep(0.05)


def test_a_second_run_into_a_held_directory_is_refused_and_the_first_finishes_intact(tmp_path):
    shared = tmp_path / "shared"
    first = subprocess.Popen(
        [sys.executable, "train_accelerate.py", *TINY_FLAGS, "--output_dir", str(shared),
         "--feature_cache_dir", str(tmp_path / "cache-first")],
        cwd=REPO_ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    wait_for((shared / HOLDER_NAME).is_file, first)
    first.send_signal(signal.SIGSTOP)  # the first run holds the directory and cannot finish meanwhile
    second = [*TINY_FLAGS, "--feature_cache_dir", str(tmp_path / "cache-second")]
    try:
        with pytest.raises(OutputDirUnavailable, match=rf"in use by another run: process {first.pid} on "):
            train_accelerate.main([*second, "--output_dir", str(shared)])
    finally:
        first.send_signal(signal.SIGCONT)
    output = first.communicate(timeout=300)[0]
    assert first.returncode == 0, output[-3000:]
    # The refused run wrote nothing: the first run's weights are those of the same run made alone.
    train_accelerate.main([*second, "--output_dir", str(tmp_path / "alone")])
    assert_same_weights(saved_weights(shared), saved_weights(tmp_path / "alone"))


def test_a_crashed_holder_leaves_no_stale_lock(tmp_path):
    output_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from accelerate import Accelerator; "
         "from training.run_lock import hold_output_dir\n"
         f"with hold_output_dir(Accelerator(cpu=True), {str(output_dir)!r}):\n"
         "    print('held', flush=True); sys.stdin.read()"],
        cwd=REPO_ROOT, env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(OutputDirUnavailable, match=f"process {holder.pid} on {socket.gethostname()}"):
        train(tiny_args(tmp_path, output_dir=str(output_dir)))
    holder.kill()  # SIGKILL: no clean-up runs, the operating system releases the lock
    holder.wait()
    assert train(tiny_args(tmp_path, output_dir=str(output_dir))).global_step == 6


@pytest.mark.parametrize("path_kind", ["read-only directory", "a file"])
def test_an_unwritable_output_dir_is_refused_before_anything_loads(tmp_path, monkeypatch, path_kind):
    def must_not_build(*args, **kwargs):
        raise AssertionError("the model was built before the output directory was checked")

    monkeypatch.setattr(training.loop, "build_model", must_not_build)
    if path_kind == "a file":
        output_dir = tmp_path / "taken"
        output_dir.write_text("not a directory")
    elif os.geteuid() == 0:  # root writes into any directory whose mode forbids it, but not into sysfs
        output_dir = Path("/sys/vlm-run")
    else:
        output_dir = tmp_path / "read-only"
        output_dir.mkdir()
        output_dir.chmod(0o500)
    with pytest.raises(OutputDirUnavailable, match=rf"--output_dir {output_dir} cannot be written to"):
        train(tiny_args(tmp_path, output_dir=str(output_dir)))


def signal_at_step(monkeypatch, step: int, signum: int) -> None:
    """Sends `signum` to this process during optimizer step `step` (counted from 1 in this run)."""
    training_step, calls = training.loop.training_step, []

    def signalling_step(*args, **kwargs):
        calls.append(None)
        if len(calls) == step:
            os.kill(os.getpid(), signum)
        return training_step(*args, **kwargs)

    monkeypatch.setattr(training.loop, "training_step", signalling_step)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_checkpoints_the_step_and_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch, signum):
    args = tiny_args(tmp_path, max_train_samples=72, num_train_epochs=2, save_steps=0, output_dir=str(tmp_path / "a"))
    straight = train(args)
    stopped = replace(args, output_dir=str(tmp_path / "stopped"))
    handler_before = signal.getsignal(signal.SIGTERM)
    signal_at_step(monkeypatch, 4, signum)
    with pytest.raises(TrainingInterrupted, match=f"Stopped by {signal.Signals(signum).name} after optimizer step 4"):
        train(stopped)
    assert signal.getsignal(signal.SIGTERM) is handler_before  # the handlers in place before are back
    assert latest_checkpoint(stopped.output_dir) == str(Path(stopped.output_dir) / "checkpoint-4")
    monkeypatch.undo()
    resumed = train(replace(stopped, resume_from_checkpoint="latest"))
    assert resumed.global_step == straight.global_step == 18
    assert_same_weights(saved_weights(Path(stopped.output_dir)), saved_weights(Path(args.output_dir)))


def test_sigterm_to_the_command_exits_with_its_own_status_and_resumes_exactly(tmp_path):
    flags = [*TINY_FLAGS, "--num_train_epochs", "40", "--feature_cache_dir", str(tmp_path / "cache")]
    run = subprocess.Popen(
        [sys.executable, "train_accelerate.py", *flags, "--output_dir", str(tmp_path / "stopped")],
        cwd=REPO_ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    wait_for(lambda: "train mlp" in (run.stdout.readline() or ""), run)  # the progress bar: training has begun
    time.sleep(0.5)
    run.send_signal(signal.SIGTERM)
    output = run.communicate(timeout=300)[0]
    assert run.returncode == INTERRUPTED_EXIT_STATUS, output[-3000:]
    assert "SIGTERM received: stopping after this optimizer step" in output
    assert "--resume_from_checkpoint latest" in output
    step = json.loads((Path(latest_checkpoint(tmp_path / "stopped")) / "trainer_state.json").read_text())["global_step"]
    assert 0 < step < 480  # 48 images in batches of 4 for 40 epochs
    # Wherever it stopped, the resumed run ends where the uninterrupted one does.
    train_accelerate.main([*flags, "--output_dir", str(tmp_path / "stopped"), "--resume_from_checkpoint", "latest"])
    train_accelerate.main([*flags, "--output_dir", str(tmp_path / "straight")])
    assert_same_weights(saved_weights(tmp_path / "stopped"), saved_weights(tmp_path / "straight"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"per_device_train_batch_size": 4}, "per_device_train_batch_size 8 -> 4"),
        ({"gradient_accumulation_steps": 2}, "gradient_accumulation_steps 1 -> 2"),
        ({"learning_rate": 1e-3}, "learning_rate 0.003 -> 0.001"),
        ({"num_train_epochs": 3}, "num_train_epochs 2 -> 3"),
        ({"lr_scheduler_type": "linear"}, "lr_scheduler_type 'cosine' -> 'linear'"),
        ({"max_train_samples": 40}, "max_train_samples 48 -> 40; num_train_examples 48 -> 40"),
        ({"group_by_length": True}, "group_by_length False -> True"),
    ],
)
def test_a_resume_that_changes_the_run_is_refused_naming_the_setting(tmp_path, change, message):
    args = tiny_args(tmp_path, num_train_epochs=2, save_steps=3, save_total_limit=4)
    train(args)
    checkpoint = str(Path(args.output_dir) / "checkpoint-3")
    with pytest.raises(CheckpointError, match=rf"other settings \({message}\)"):
        train(replace(args, resume_from_checkpoint=checkpoint, **change))


def worker_of_rank(launcher: subprocess.Popen, rank: int) -> int | None:
    """The pid of the training process of `rank` that `accelerate launch` started, once it runs."""
    for entry in Path("/proc").iterdir():
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"train_accelerate.py" in cmdline and f"RANK={rank}".encode() in environ and int(entry.name) != launcher.pid:
            return int(entry.name)
    return None


def test_sigterm_to_one_of_two_processes_stops_both_after_the_same_step_and_resumes_exactly(tmp_path):
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(CONFIGS / "accelerate" / "cpu.yaml"), "--main_process_port", str(port), "train_accelerate.py",
              *TINY_FLAGS, "--num_train_epochs", "30", "--feature_cache_dir", str(tmp_path / "cache")]  # fmt: skip
    run = subprocess.Popen(
        [*launch, "--output_dir", str(tmp_path / "stopped")],
        cwd=REPO_ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    wait_for(lambda: "train mlp" in (run.stdout.readline() or ""), run)
    time.sleep(0.5)
    os.kill(worker_of_rank(run, 1), signal.SIGTERM)  # rank 1 only: rank 0 must stop after the same step
    output = run.communicate(timeout=300)[0]
    assert run.returncode != 0, output[-3000:]
    assert "SIGTERM received: stopping after this optimizer step" in output
    assert "Stopped by a stop signal to another process after optimizer step" in output  # rank 0
    assert f"exit status {INTERRUPTED_EXIT_STATUS}" in output
    checkpoint = Path(latest_checkpoint(tmp_path / "stopped"))
    assert 0 < json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] < 180

    resumed = subprocess.run([*launch, "--output_dir", str(tmp_path / "stopped"), "--resume_from_checkpoint", "latest"],
                             cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight = subprocess.run([*launch, "--output_dir", str(tmp_path / "straight")],
                              cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert_same_weights(saved_weights(tmp_path / "stopped"), saved_weights(tmp_path / "straight"))

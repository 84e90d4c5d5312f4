"""Background training jobs: `newsrank train` in a child process, its state in the feedback store.

A child process keeps training's CPU and memory away from the serving process and lets a crash fail the job,
not the service. One job runs at a time across every instance that shares the store (training takes every
core, and two runs would publish over each other): the store grants it. The instance that started a job
watches it from a thread that reports a heartbeat and the tail of the output to the store, so any instance
can show the job. If that instance dies, its child is stopped with it (Linux), and any instance that finds a
running job silent for `job_silence_seconds` marks it interrupted: a rerun resumes from the run's checkpoint.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from adapters.registry import parse_reference
from adapters.train import parse_overrides
from config.settings import Settings
from core.errors import BackendError, InvalidInput
from core.records import Job
from core.stores import FeedbackStore

LOG_TAIL_BYTES = 4000
INSTANCE = f"{socket.gethostname()}:{os.getpid()}"  # this service process, as jobs name their runner


class TrainingJobs:
    def __init__(self, feedback: FeedbackStore, settings: Settings, clock: Callable[[], float]) -> None:
        self.feedback = feedback
        self.settings = settings
        self.clock = clock

    def recover(self) -> None:
        """Mark interrupted the running jobs whose runner is gone: silent too long, or an earlier process on
        this machine that is not running any more."""
        now = self.clock()
        self.feedback.interrupt_jobs(now - self.settings.job_silence_seconds, now)
        host = INSTANCE.rsplit(":", 1)[0]
        for job in self.feedback.jobs("running"):
            runner_host, _, runner_pid = job.instance.rpartition(":")
            if runner_host == host and job.instance != INSTANCE and not _alive(int(runner_pid or 0)):
                self.feedback.update_job(replace(job, status="interrupted", finished_at=now))

    def start(
        self,
        name: str,
        since: str = "last",
        overrides: Sequence[str] = (),
        force: bool = False,
        continual: bool = False,
        candidate: bool = False,
    ) -> Job:
        """Train adapter `name` on the events since `since` ("last": since its active version), gate it and
        publish it if it is better (or always, with force). `continual`: start from the active version's weights;
        `candidate`: publish it inactive, for the learning loop's A/B test to decide."""
        if parse_reference(name)[1] is not None:
            raise InvalidInput(f"train a name, not a version: {name!r}")
        parse_overrides(overrides)  # the trainer parses them again, the same way
        args = ["train", "--name", name, "--since", since, *(a for o in overrides for a in ("--set", o))]
        args += ["--force"] if force else []
        args += ["--from-active"] if continual else []
        args += ["--candidate"] if candidate else []
        self.recover()  # a dead runner must not hold the one slot
        job_id = uuid.uuid4().hex[:12]
        log = self.settings.data_dir / "jobs" / f"{job_id}.log"
        now = self.clock()
        job = Job(job_id, "train", args, "running", now, log_path=str(log), instance=INSTANCE, heartbeat_at=now)
        self.feedback.claim_job(job)  # Conflict if a job runs anywhere
        started = threading.Event()
        runner = threading.Thread(target=self._run, args=(job, started), daemon=True, name=f"job-{job_id}")
        runner.start()
        started.wait()
        job = self.feedback.job(job_id)
        if job.status == "failed" and job.exit_code is None:
            raise BackendError(f"training job {job_id} did not start: {job.log_tail}")
        return job

    def _run(self, job: Job, started: threading.Event) -> None:
        """Start the child and watch it. This thread lives exactly as long as the child: Linux stops the child
        when the thread that started it ends, which is how the child dies with a killed service."""
        log = Path(job.log_path)
        try:
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("w") as out:
                process = subprocess.Popen(
                    [sys.executable, "-m", "serve.cli", *job.args],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, **self.settings.as_env()},
                    preexec_fn=_die_with_parent,
                )
        except Exception as exc:  # the job failed to start; the caller waiting on `started` must hear of it
            self.feedback.update_job(replace(job, status="failed", finished_at=self.clock(), log_tail=str(exc)))
            started.set()
            return
        job = replace(job, pid=process.pid)
        self.feedback.update_job(job)
        started.set()
        while True:
            try:
                code = process.wait(timeout=self.settings.job_heartbeat_seconds)
                break
            except subprocess.TimeoutExpired:
                self.feedback.update_job(replace(job, heartbeat_at=self.clock(), log_tail=tail(log)))
        status = "succeeded" if code == 0 else "failed"
        now = self.clock()
        self.feedback.update_job(
            replace(job, status=status, exit_code=code, finished_at=now, heartbeat_at=now, log_tail=tail(log))
        )

    def get(self, job_id: str) -> Job:
        self.recover()
        return self.feedback.job(job_id)

    def list(self) -> list[Job]:
        self.recover()
        return self.feedback.jobs()


def _die_with_parent() -> None:
    """In the child before exec: ask Linux for SIGTERM when the starting thread ends (PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # gone, or someone else's process now holds the number
        return False
    return True


def tail(path: Path, limit: int = LOG_TAIL_BYTES) -> str:
    """The end of a job's output, where the result or the error is."""
    if not path.is_file():
        return ""
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - limit))
        return f.read().decode("utf-8", errors="replace")

"""Background training jobs: `newsrank train` in a child process, its state in the feedback store.

A child process keeps training's CPU and memory away from the serving process and lets a crash fail the job,
not the service. One job runs at a time (training takes every core). Jobs that were running when the service
stopped are marked interrupted at the next start: a rerun resumes from the run's checkpoint.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from adapters.registry import parse_reference
from agent.errors import Conflict, InvalidInput
from agent.feedback import FeedbackStore, Job
from agent.settings import Settings

LOG_TAIL_BYTES = 4000


class TrainingJobs:
    def __init__(self, feedback: FeedbackStore, settings: Settings, clock: Callable[[], float]) -> None:
        self.feedback = feedback
        self.settings = settings
        self.clock = clock
        self._lock = threading.Lock()

    def recover(self) -> None:
        """At service start: jobs whose process is gone (the service stopped under them) become interrupted."""
        for job in self.feedback.jobs("running"):
            if not _alive(job.pid):
                self.feedback.update_job(replace(job, status="interrupted", finished_at=self.clock()))

    def start(self, name: str, since: str = "last", overrides: Sequence[str] = (), force: bool = False) -> Job:
        """Train adapter `name` on the events since `since` ("last": since its active version), gate it and
        publish it if it is better (or always, with force)."""
        parse_reference(name)
        for override in overrides:
            if "=" not in override or override.split("=", 1)[0] in {"data", "output", "base_model", "model_cache"}:
                raise InvalidInput(f"bad training override {override!r}; expected KEY=VALUE of a training setting")
        args = ["train", "--name", name, "--since", since, *(a for o in overrides for a in ("--set", o))]
        args += ["--force"] if force else []
        with self._lock:
            running = self.feedback.jobs("running")
            if running:
                raise Conflict(f"training job {running[0].job_id} is still running; one job runs at a time")
            job_id = uuid.uuid4().hex[:12]
            log = self.settings.data_dir / "jobs" / f"{job_id}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("w") as out:
                process = subprocess.Popen(
                    [sys.executable, "-m", "agent.cli", *args],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, **self.settings.as_env()},
                )
            job = Job(job_id, "train", args, "running", self.clock(), log_path=str(log), pid=process.pid)
            self.feedback.add_job(job)
        threading.Thread(target=self._wait, args=(job, process), daemon=True, name=f"job-{job_id}").start()
        return job

    def _wait(self, job: Job, process: subprocess.Popen) -> None:
        code = process.wait()
        status = "succeeded" if code == 0 else "failed"
        self.feedback.update_job(replace(job, status=status, exit_code=code, finished_at=self.clock()))

    def get(self, job_id: str) -> Job:
        return self.feedback.job(job_id)

    def list(self) -> list[Job]:
        return self.feedback.jobs()


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process now holds the number
        return False
    return True


def log_tail(job: Job, limit: int = LOG_TAIL_BYTES) -> str:
    """The end of a job's output, where the result or the error is."""
    path = Path(job.log_path)
    if not path.is_file():
        return ""
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - limit))
        return f.read().decode("utf-8", errors="replace")

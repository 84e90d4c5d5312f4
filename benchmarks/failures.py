"""What the service does while a part of it fails under load, and whether it comes back without a restart.

    .venv/bin/python benchmarks/failures.py [--scenarios chroma,disk,llm] [--clients 4] [--before 6]
                                            [--outage 12] [--after 15] [--threads N]

Each scenario serves the real app under uvicorn on 127.0.0.1 in this process (as benchmarks/load.py does, whose
load it runs: `--clients` clients, feeds, events, chat) and breaks one part after `--before` seconds. The LLM of
the chroma and disk scenarios is a stub replica (below), so that requests are quick enough to meet the outage;
`--packaged-llm` puts the packaged model in this process instead.

- chroma: the articles live in a real Chroma server (`chroma run` on loopback, NEWSRANK_CHROMA_URL); it is
  stopped for `--outage` seconds, then started again on the same port and folder;
- disk: the SQLite feedback store sits on a 16 MiB tmpfs (needs root for `mount`; skipped otherwise), nearly
  filled with a filler file before the load; the load writes events until writes fail, goes on for `--outage`
  seconds, then the filler is deleted;
- llm: NEWSRANK_BACKEND=openai pointed at a stub OpenAI-compatible replica in this process (Yes/No
  log-probabilities that vary with the candidate, a fixed sentence for generation); the stub is stopped for
  `--outage` seconds, then started again on the same port.

The load goes on for `--after` seconds after the repair. Beside the load's clients, which wait for their answers
(slow feeds can keep all of them busy through a short outage), a probe client sends a cold-start reader's feed (no
LLM) or a small event batch every 0.25 s. Prints per scenario: requests by phase (before, outage, after; by the time
each answer came), client, route and status; an example error body per route and status seen during the outage;
acknowledged events missing from the store (read back through a fresh connection); the recovery time: from the
repair to the first good answer (2xx, not degraded) to a probe feed, a probe event batch and a feed of the load sent
after the repair, and the failures answered after the repair. The service is never restarted. Everything runs on
loopback and stops by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx
from harness import (  # the app on loopback, the load and its report (benchmarks/harness.py)
    SERVICE_LOG,
    Result,
    Run,
    by_status,
    durability,
    error_samples,
    free_port,
    new_run,
    percentile,
    quiet_logs,
    run_load,
    serving,
    start_service,
)

from config.settings import Settings
from core.llm import Backend
from llm.backends.tokenizer import ModelTokenizer
from llm.models import offline
from serve.service import DEMO_USERS, make_backend
from store import open_store

MIX = {"feed": 50, "events": 30, "chat": 15, "explain": 5}
DISK_MIX = {"feed": 25, "events": 75}  # writes fill the disk; feeds show whether reads go on
PROBE_MIX = {"feed": 1, "events": 1}
PROBE_READERS = ("demo-new",)  # a cold-start reader: a feed without the LLM, so the probe never waits on it
PROBE_PAUSE = 0.25
# more than SQLite's WAL grows to before a checkpoint (1000 pages, 4 MiB), so that the space freed at the repair
# lasts through the rest of the run instead of filling up again at once
TINY_FS = "16m"
HEADROOM = 256 * 1024  # bytes left free on the tiny filesystem when the load starts


# -- the parts that fail ------------------------------------------------------------------------------------
class ChromaServer:
    """`chroma run` on a fixed loopback port and folder, stopped and started at will."""

    def __init__(self, folder: Path) -> None:
        self.command = shutil.which("chroma") or str(Path(sys.executable).with_name("chroma"))
        self.folder, self.port = folder, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, seconds: float = 60) -> float:
        """Start it and wait (bounded) for its heartbeat; the seconds that took."""
        started = time.monotonic()
        command = [self.command, "run", "--path", str(self.folder), "--host", "127.0.0.1", "--port", str(self.port)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while time.monotonic() - started < seconds:
            if self.process.poll() is not None:
                raise SystemExit(f"chroma run exited with {self.process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/api/v2/heartbeat", timeout=2).status_code == 200:
                    return time.monotonic() - started
            time.sleep(0.2)
        raise SystemExit(f"the Chroma server did not answer within {seconds} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


class StubReplica:
    """A stand-in for one `vllm serve` replica: /v1/models and /v1/completions in vLLM's shape. Scores are
    log-probabilities of the Yes and No tokens that vary with the prompt; generation is a fixed sentence."""

    def __init__(self, model: str, answer_ids: tuple[int, int]) -> None:
        self.model, self.answer_ids = model, answer_ids
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: ThreadingHTTPServer | None = None

    def reply(self, body: dict[str, Any]) -> dict[str, Any]:
        prompts = body["prompt"] if isinstance(body["prompt"][0], list) else [body["prompt"]]
        if body.get("max_tokens", 1) > 1:
            text = "It matches the topics you read most."
            return {"choices": [{"index": 0, "text": text}], "usage": {"prompt_tokens": len(prompts[0]),
                                                                        "completion_tokens": 8}}  # fmt: skip
        yes, no = self.answer_ids
        choices = []
        for index, prompt in enumerate(prompts):
            shade = hashlib.sha256(json.dumps(prompt[-40:]).encode()).digest()[0] / 255  # the candidate's tokens
            top = {f"token_id:{yes}": -0.2 - 2 * shade, f"token_id:{no}": -1.2, "token_id:42": -4.0}
            choices.append({"index": index, "text": "Yes", "logprobs": {"top_logprobs": [top]}})
        return {"choices": choices, "usage": {"prompt_tokens": sum(map(len, prompts)), "completion_tokens": 1}}

    def start(self) -> None:
        replica = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self.send({"object": "list", "data": [{"id": replica.model}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                self.send(replica.reply(body))

            def send(self, reply: dict[str, Any]) -> None:
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)  # the same port on a restart
        threading.Thread(target=self.server.serve_forever, daemon=True, name="stub-replica").start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@contextlib.contextmanager
def tiny_filesystem(folder: Path) -> Iterator[bool]:
    """A tmpfs of TINY_FS at `folder`; yields False (and mounts nothing) when this process may not mount."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        yield False
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TINY_FS}", "tmpfs", str(folder)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:
        print(f"mount failed: {mounted.stderr.strip()}")
        yield False
        return
    try:
        yield True
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], check=False)  # something still holds it: detach


def fill(folder: Path, leave: int) -> Path:
    """A filler file that leaves about `leave` bytes free on the folder's filesystem."""
    filler = folder / "filler"
    with filler.open("wb") as f:
        while (free := shutil.disk_usage(folder).free) > leave:
            f.write(b"\0" * min(256 * 1024, free - leave))
            f.flush()
            os.fsync(f.fileno())
    return filler


# -- running one scenario -----------------------------------------------------------------------------------
class Timeline:
    """The load and a probe in background threads; the scenario breaks and repairs things on the main thread.

    The load's clients wait for their answers, so while every one of them waits on a slow feed nothing new is
    sent. The probe is one more client that does not wait on the model: a cold-start reader's feed (no LLM) or a
    small event batch every PROBE_PAUSE seconds, so that every phase has answers to show."""

    def __init__(self, base: str, key: str, clients: int, mix: dict[str, float], limit: float) -> None:
        self.stop = threading.Event()
        self.run, self.probe = new_run(), new_run()
        self.marks: dict[str, float] = {}
        load = {"clients": clients, "mix": mix, "run": self.run}
        probe = {"clients": 1, "mix": PROBE_MIX, "run": self.probe, "readers": PROBE_READERS, "pause": PROBE_PAUSE}
        self.threads = [
            threading.Thread(target=run_load, args=(base, key), name=name,
                             kwargs={"seconds": limit, "stop": self.stop, "timeout": 60, **kwargs})
            for name, kwargs in (("load", load), ("probe", probe))
        ]  # fmt: skip
        for thread in self.threads:
            thread.start()

    def mark(self, name: str) -> float:
        self.marks[name] = time.monotonic()
        return self.marks[name]

    def results(self) -> list[Result]:
        """What has come back so far, the load's and the probe's."""
        with self.run.lock, self.probe.lock:
            return [*self.run.results, *self.probe.results]

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


def wait_for(seconds: float, until: Callable[[], bool] = lambda: False) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if until():
            return True
        time.sleep(0.2)
    return False


T = TypeVar("T")


def under_outage(base: str, key: str, args: argparse.Namespace, stop: Callable[[], Any], start: Callable[[], T]
                 ) -> tuple[Timeline, T]:  # fmt: skip
    """The load before, during and after an outage: `stop` begins it, `start` repairs it (what it returns is
    returned, beside the timeline)."""
    timeline = Timeline(base, key, args.clients, MIX, args.before + args.outage + args.after + 60)
    wait_for(args.before)
    timeline.mark("outage")
    stop()
    wait_for(args.outage)
    timeline.mark("repair")
    repaired = start()
    wait_for(args.after)
    timeline.finish()
    return timeline, repaired


def phase_of(result: Result, marks: dict[str, float]) -> str:
    """By the time the answer came: what a client saw while the part was broken."""
    if result.end < marks["outage"]:
        return "before"
    return "outage" if result.end < marks["repair"] else "after"


def report(name: str, timeline: Timeline, store_url: str, note: str = "") -> None:
    marks, repair = timeline.marks, timeline.marks["repair"]
    print(f"\n### {name}\n")
    if note:
        print(note + "\n")
    print(f"outage: {repair - marks['outage']:.1f} s; phases by the time each answer came\n")
    print("| phase | client | route | requests | by status | p50 (s) | p95 (s) |")
    print("|---|---|---|---:|---|---:|---:|")
    for phase in ("before", "outage", "after"):
        for client, run in (("load", timeline.run), ("probe", timeline.probe)):
            in_phase = [r for r in run.results if phase_of(r, marks) == phase]
            for route in ("feed", "explain", "chat", "events"):
                group = [r for r in in_phase if r.route == route]
                if group:
                    times = [r.seconds for r in group]
                    print(f"| {phase} | {client} | {route} | {len(group)} | {by_status(group)} "
                          f"| {percentile(times, 50):.2f} | {percentile(times, 95):.2f} |")  # fmt: skip
    print()
    results = timeline.results()
    for sample in error_samples(results, lambda r: phase_of(r, marks) == "outage"):
        print(f"- during the outage, {sample}")
    for sample in error_samples(results, lambda r: phase_of(r, marks) == "after"):
        print(f"- after the repair, {sample}")
    store = open_store(store_url)  # a fresh connection: what is on disk, not what one connection remembers
    try:
        counts = [durability(store, run) for run in (timeline.run, timeline.probe)]
    finally:
        store.close()
    lost = [pair for c in counts for pair in c.lost]
    print(f"- events acknowledged (201): {sum(c.acknowledged for c in counts)}; in the store: "
          f"{sum(c.stored for c in counts)}; "
          f"lost: {len(lost)}" + (f" e.g. {lost[:3]}" if lost else ""))  # fmt: skip
    for line in SERVICE_LOG.summary():
        print(f"- service log: {line}")
    SERVICE_LOG.reset()

    def first_good(run: Run, routes: tuple[str, ...]) -> str:
        good = sorted(r.end for r in run.results if r.start >= repair and r.route in routes and r.ok and not r.degraded)
        return f"{good[0] - repair:.1f} s" if good else "none within the run"

    after = sorted((r for r in results if r.end >= repair and (not r.ok or r.degraded)), key=lambda r: r.end)
    last = f" ({by_status(after)}, the last {after[-1].end - repair:.1f} s after the repair)" if after else ""
    print(f"- recovery, from the repair to the first good answer to a request sent after it: probe feed "
          f"{first_good(timeline.probe, ('feed',))}, probe events {first_good(timeline.probe, ('events',))}, "
          f"a feed of the load (LLM) {first_good(timeline.run, ('feed', 'explain'))}; answers after the repair "
          f"that failed or were degraded: {len(after)}{last}")  # fmt: skip


def chroma(args: argparse.Namespace, root: Path, key: str, model: Model) -> None:
    server = ChromaServer(root / "chroma-server")
    server.start()
    try:
        settings = scenario_settings(args, root / "chroma", key, chroma_url=server.url, **model.settings)
        service = start_service(settings, model.backend)
        with serving(service) as base:
            timeline, up = under_outage(base, key, args, server.stop, server.start)
        service.feedback.close()
        report("Chroma server stopped, then started again", timeline, settings.store_url,
               f"`chroma run` at {server.url}; after the restart its heartbeat answered in {up:.1f} s")  # fmt: skip
    finally:
        server.stop()


def disk(args: argparse.Namespace, root: Path, key: str, model: Model) -> None:
    tiny = root / "tiny"
    with tiny_filesystem(tiny) as mounted:
        if not mounted:
            print("\n### Disk full\n\nskipped: mounting a tmpfs needs root (run as root, or see the module doc)")
            return
        url = f"sqlite:///{tiny / 'feedback.sqlite3'}"
        settings = scenario_settings(args, root / "disk", key, database_url=url, **model.settings)
        service = start_service(settings, model.backend)
        filler = fill(tiny, HEADROOM)
        note = (f"SQLite store on a {TINY_FS} tmpfs, {shutil.disk_usage(tiny).free // 1024} KiB free at the start; "
                f"the outage starts with the first 5xx answer")  # fmt: skip
        try:
            with serving(service) as base:
                timeline = Timeline(base, key, args.clients, DISK_MIX, args.disk_wait + args.outage + args.after)

                def failures() -> list[Result]:  # 5xx or no answer; a 429 of the LLM's line is not the disk's
                    return [r for r in timeline.results() if isinstance(r.status, str) or r.status >= 500]

                if not wait_for(args.disk_wait, lambda: bool(failures())):
                    timeline.finish()
                    print(f"\n### Disk full\n\nno request failed within {args.disk_wait:g} s: the disk did not fill")
                    return
                timeline.marks["outage"] = min(r.end for r in failures())
                wait_for(args.outage)
                timeline.mark("repair")
                filler.unlink()
                wait_for(args.after)
                timeline.finish()
            report("Disk full under the SQLite store, then space freed", timeline, url, note)
        finally:
            service.feedback.close()


def llm(args: argparse.Namespace, root: Path, key: str) -> None:
    replica = stub_replica()
    replica.start()
    try:
        settings = scenario_settings(args, root / "llm", key, backend="openai", openai_urls=[replica.url])
        service = start_service(settings)  # the backend stack from the settings: metered, micro-batched, openai
        with serving(service) as base:
            timeline, _ = under_outage(base, key, args, replica.stop, replica.start)
        service.feedback.close()
        report("LLM replica stopped, then started again", timeline, settings.store_url,
               f"NEWSRANK_BACKEND=openai, one stub replica at {replica.url}, timeout {settings.openai_timeout:g} s, "
               f"{settings.openai_retries} retries")  # fmt: skip
    finally:
        replica.stop()


def stub_replica() -> StubReplica:
    tokens = ModelTokenizer(Settings().llm, Settings().model_cache)
    tokens.tokenizer  # noqa: B018  # loads the tokenizer, which finds the ids of the Yes and No tokens
    return StubReplica(Settings().llm, tokens.answer_ids)


@dataclass
class Model:
    """The LLM of the chroma and disk scenarios: settings for a stub replica, or the packaged model loaded once."""

    settings: dict[str, Any]
    backend: Backend | None = None


def scenario_settings(args: argparse.Namespace, data_dir: Path, key: str, **overrides: Any) -> Settings:
    return Settings(
        data_dir=data_dir,
        threads=args.threads,
        api_keys=json.dumps([{"name": "failures", "key": key, "scope": "admin"}]),
        **overrides,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default="chroma,disk,llm")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--before", type=float, default=6.0, help="seconds of load before the failure")
    parser.add_argument("--outage", type=float, default=12.0, help="seconds the part stays broken")
    parser.add_argument("--after", type=float, default=15.0, help="seconds of load after the repair")
    parser.add_argument("--disk-wait", type=float, default=40.0, help="at most this long for the disk to fill")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--packaged-llm", action="store_true",
        help="the chroma and disk scenarios on the packaged LLM in this process (default: a stub replica, so that "
        "requests are quick enough to meet the outage; on two cores a feed on the packaged model takes 10-30 s)",
    )  # fmt: skip
    args = parser.parse_args()
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if unknown := set(scenarios) - {"chroma", "disk", "llm"}:
        raise SystemExit(f"unknown scenarios {sorted(unknown)}")
    if not (1 <= args.clients <= 16 and args.before + args.outage + args.after <= 300):
        raise SystemExit("keep it bounded: 1-16 clients, at most 300 s of load per scenario")
    offline()
    quiet_logs()
    key = secrets.token_urlsafe(24)
    print(f"{args.clients} clients; {args.before:g} s of load, {args.outage:g} s of outage, {args.after:g} s after; "
          f"mix {MIX} (disk: {DISK_MIX}); demo readers {', '.join(DEMO_USERS)}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        if args.packaged_llm:  # loaded once, shared by the two scenarios
            model = Model({}, make_backend(scenario_settings(args, root / "model", key)))
        else:  # a replica that stays up; the llm scenario starts (and stops) one of its own
            replica = stub_replica()
            replica.start()
            stack.callback(replica.stop)
            model = Model({"backend": "openai", "openai_urls": [replica.url]})
        print(f"the chroma and disk scenarios' LLM: {'the packaged model' if args.packaged_llm else 'a stub replica'}")
        for scenario in scenarios:
            started = time.monotonic()
            if scenario == "chroma":
                chroma(args, root, key, model)
            elif scenario == "disk":
                disk(args, root, key, model)
            else:
                llm(args, root, key)
            print(f"\n({scenario}: {time.monotonic() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()

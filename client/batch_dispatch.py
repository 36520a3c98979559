"""Jobs spread over ComfyUI servers by their free capacity, one thread per server.

A server is filled up to ``depth`` prompts in its queue (/queue counts every client's), preferring jobs whose
workflow and checkpoint it ran last, so its models stay loaded, and the identity it ran last, so the host's cache
keeps its encoding. A server that stops answering is marked down, its unfinished jobs go back to the board for
the others, and it is asked again every ``probe_s``; a job that fails on a server runs again on another, at most
``attempts`` times in all, as does one without a result after ``job_timeout`` or gone from a server's queue
without a result (a server restarted between two looks); a job the server refuses (validation), or that fails on the pack's own check of its
inputs, is a bad row: reported with the server's message, not retried.
"""
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from batch_journal import Journal, write_atomic
from batch_manifest import Identity, Job
from comfy_server import ClientError, Refused, Server, ServerDown, refusal_text
from job_workflow import build_prompt

PHOTOS, IDENTITIES = "consistentid_batch", "consistentid_identities"  # upload subfolders of the input folder
PACK_ERRORS = "consistentid_core.errors."  # the exception module of the pack's messages about an input


@dataclass
class Try:
    job: Job
    attempts: int = 0
    failed_on: set = field(default_factory=set)
    tries: list = field(default_factory=list)  # [server, what happened] per try


class Board:
    """The jobs still to run, shared by the server threads."""

    def __init__(self, jobs: list[Job], journal: Journal, attempts: int, servers: int):
        self.pending = [Try(job) for job in sorted(jobs, key=lambda j: (j.warm_key, j.identity, j.row, j.seed))]
        self.running = 0
        self.journal = journal
        self.attempts = attempts
        self.servers = servers
        self.done = self.failed = 0
        self.live: set[str] = set()  # servers answering now
        self.lock = threading.Lock()

    def take(self, server: str, warm: tuple | None, identity: str | None) -> Try | None:
        with self.lock:
            # A job that failed here waits for another server, unless every server that answers has failed it.
            usable = [t for t in self.pending if server not in t.failed_on or not self.live - t.failed_on]
            if not usable:
                return None
            best = max(usable, key=lambda t: (t.job.warm_key == warm, t.job.identity == identity))
            self.pending.remove(best)
            best.attempts += 1
            self.running += 1
            return best

    def put_back(self, attempt: Try, server: str, reason: str, failed: bool) -> None:
        """A try that did not finish: again on the board (on another server if ``failed``) while tries are left."""
        attempt.tries.append([server, reason])
        if failed:
            attempt.failed_on.add(server)
        if attempt.attempts >= self.attempts or len(attempt.failed_on) >= self.servers:
            self.finish(attempt, {"status": "failed", "message": f"{len(attempt.tries)} tries failed; last: {reason}"})
            return
        with self.lock:
            self.running -= 1
            self.pending.insert(0, attempt)

    def finish(self, attempt: Try, outcome: dict) -> None:
        job = attempt.job
        self.journal.add({"job": job.id, "row": job.row, "identity": job.identity, "seed": job.seed,
                          "prompt": job.settings["prompt"], "settings": job.settings, "workflow": str(job.workflow),
                          "attempts": attempt.attempts, "tries": attempt.tries, **outcome})
        with self.lock:
            self.running -= 1
            if outcome["status"] == "done":
                self.done += 1
            else:
                self.failed += 1

    def mark(self, server: str, live: bool) -> None:
        with self.lock:
            (self.live.add if live else self.live.discard)(server)

    def empty(self) -> bool:
        with self.lock:
            return not self.pending and not self.running


@dataclass
class InFlight:
    attempt: Try
    prompt_id: str
    save: str
    facesim: str | None
    queued: float


class Worker(threading.Thread):
    def __init__(self, url: str, board: Board, identities: dict[str, Identity], out: Path, stop: threading.Event,
                 depth: int, poll_s: float, probe_s: float, request_timeout: float, job_timeout: float):
        super().__init__(daemon=True, name=url)
        self.server = Server(url, request_timeout)
        self.board, self.identities, self.out, self.stop = board, identities, out, stop
        self.depth, self.poll_s, self.probe_s, self.job_timeout = depth, poll_s, probe_s, job_timeout
        self.in_flight: list[InFlight] = []
        self.uploaded: dict[str, dict] = {}  # identity -> the names it has on this server
        self.workflows: dict[Path, dict] = {}
        self.warm: tuple | None = None
        self.identity: str | None = None
        self.state = "starting"
        self.done = 0

    def run(self) -> None:
        while not self.stop.is_set() and not self.board.empty():
            try:
                queued = self.server.queue()
                self._collect(set(queued))
                self._fill(len(queued))
                self.board.mark(self.server.url, True)
                self.state = f"{len(self.in_flight)} queued"
            except ServerDown as err:
                self._down(str(err))
            self.stop.wait(self.poll_s)
        self._leave()

    def _down(self, reason: str) -> None:
        self.state = f"down ({reason})"
        self.board.mark(self.server.url, False)
        for flight in self.in_flight:
            self.board.put_back(flight.attempt, self.server.url, f"server down: {reason}", failed=False)
        self.in_flight, self.uploaded, self.warm = [], {}, None
        while not self.stop.is_set() and not self.board.empty():
            self.stop.wait(self.probe_s)
            try:
                self.server.get_json("/system_stats")
                return
            except ClientError:
                continue

    def _leave(self) -> None:
        """On Ctrl-C: take this client's waiting prompts off the server's queue; the re-run queues them again."""
        if self.in_flight:
            try:
                self.server.delete_pending([flight.prompt_id for flight in self.in_flight])
            except ClientError:
                pass
        self.state = "stopped" if self.stop.is_set() else "finished"

    def _fill(self, queued: int) -> None:
        free = self.depth - queued
        while free > 0 and not self.stop.is_set():
            attempt = self.board.take(self.server.url, self.warm, self.identity)
            if attempt is None:
                return
            try:
                self._queue(attempt)
            except ServerDown as err:
                self.board.put_back(attempt, self.server.url, f"server down: {err}", failed=False)
                raise
            except ClientError as err:  # a workflow the client cannot use, or a file it cannot read
                self.board.finish(attempt, {"status": "failed", "message": str(err)})
            free -= 1

    def _names(self, name: str) -> dict:
        """The identity's photo and file as uploaded to this server (once), named by their content."""
        if name not in self.uploaded:
            identity, sha = self.identities[name], self.identities[name].sha256()[:12]
            names = {}
            if identity.photo:
                names["photo"] = self.server.upload(identity.photo, f"{name}_{sha}{identity.photo.suffix}", PHOTOS)
            if identity.file:
                self.server.upload(identity.file, f"{name}_{sha}.safetensors", IDENTITIES)
                names["file"] = f"{name}_{sha}.safetensors"
            self.uploaded[name] = names
        return self.uploaded[name]

    def _queue(self, attempt: Try) -> None:
        job = attempt.job
        if job.workflow not in self.workflows:
            self.workflows[job.workflow] = json.loads(job.workflow.read_text())
        prompt, save, facesim = build_prompt(self.workflows[job.workflow], self._names(job.identity),
                                             {**job.settings, "seed": job.seed})
        try:
            prompt_id = self.server.queue_prompt(prompt)
        except Refused as err:
            self.board.finish(attempt, {"status": "failed", "server": self.server.url,
                                        "message": f"refused by {self.server.url}: {refusal_text(err)}"})
            return
        self.in_flight.append(InFlight(attempt, prompt_id, save, facesim, time.monotonic()))
        self.warm, self.identity = job.warm_key, job.identity

    def _collect(self, queued: set[str]) -> None:
        """Save what finished; ``queued`` is the server's queue as it was before the history was read."""
        for flight in list(self.in_flight):
            entry = self.server.history(flight.prompt_id)
            if entry is None:
                waited = time.monotonic() - flight.queued
                if flight.prompt_id not in queued or waited > self.job_timeout:
                    self.in_flight.remove(flight)
                    reason = ("gone from the queue without a result" if flight.prompt_id not in queued
                              else f"no result after {waited:.0f} s")
                    self.board.put_back(flight.attempt, self.server.url, reason, failed=True)
                continue
            status = entry.get("status", {})
            if status.get("status_str") == "error":
                self.in_flight.remove(flight)
                self._failed(flight, status.get("messages", []))
            elif status.get("completed"):
                self.in_flight.remove(flight)
                self._save(flight, entry["outputs"])

    def _failed(self, flight: InFlight, messages: list) -> None:
        errors = [data for event, data in messages if event == "execution_error"]
        error = errors[0] if errors else {}
        reason = (f"{error.get('node_type', 'a node')} failed on {self.server.url}: "
                  f"{str(error.get('exception_message', messages)).strip()}")
        if PACK_ERRORS in str(error.get("exception_type", "")):
            self.board.finish(flight.attempt, {"status": "failed", "server": self.server.url, "message": reason})
        else:
            self.board.put_back(flight.attempt, self.server.url, reason, failed=True)

    def _save(self, flight: InFlight, outputs: dict) -> None:
        job = flight.attempt.job
        [image] = outputs[flight.save]["images"]
        path = Path("images") / job.identity / f"{job.identity}_row{job.row}_seed{job.seed}_{job.id}.png"
        write_atomic(self.out / path, self.server.download(image))
        score = outputs[flight.facesim]["facesim"][0] if flight.facesim else {"facesim": None, "face": None}
        flight.attempt.tries.append([self.server.url, "done"])
        self.board.finish(flight.attempt, {"status": "done", "server": self.server.url, "image": str(path),
                                           "facesim": score["facesim"], "face": score["face"],
                                           "seconds": round(time.monotonic() - flight.queued, 2),
                                           "prompt_id": flight.prompt_id})
        self.done += 1

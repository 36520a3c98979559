"""Run a batch of ConsistentID jobs (identities × prompts × seeds, with per-row settings) over one or more
ComfyUI servers, and score every image with FaceSim.

    python consistentid_batch.py manifest.json --server http://gpu1:8188 --server http://gpu2:8188 --out results

The manifest format is in ``batch_manifest.py``. Into ``--out`` go ``images/<identity>/…png``, ``results.csv`` and
``results.json`` (every job with its row's settings, FaceSim, server and tries), ``contact_<identity>.png`` per
identity, and the batch's record (``manifest.json``, ``journal.jsonl``): after Ctrl-C, a crash or a fault, run the
same command again (or leave out the manifest) and only the jobs not yet finished run.

Needs Python 3.10+ and Pillow (for the contact sheets); the models are the servers'.
"""
import argparse
import json
import sys
import threading
import time
from pathlib import Path

from batch_dispatch import Board, Worker
from batch_journal import MANIFEST, Journal, write_atomic
from batch_manifest import expand, read_manifest
from batch_results import write_contact_sheets, write_table
from comfy_server import ClientError


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("manifest", type=Path, nargs="?",
                        help="the batch (JSON); left out, the one the output folder was started with")
    parser.add_argument("--server", action="append", required=True, metavar="URL",
                        help="a ComfyUI server with this pack, e.g. http://127.0.0.1:8188; repeat for several")
    parser.add_argument("--out", type=Path, default=Path("consistentid_batch"),
                        help="output folder, also what a re-run resumes from (default: %(default)s)")
    parser.add_argument("--depth", type=int, default=2,
                        help="prompts kept in each server's queue, so its GPU never waits (default: %(default)s)")
    parser.add_argument("--attempts", type=int, default=3,
                        help="tries per job before it is reported failed (default: %(default)s)")
    parser.add_argument("--request-timeout", type=float, default=30,
                        help="seconds a server may take to answer before it counts as down (default: %(default)s)")
    parser.add_argument("--job-timeout", type=float, default=3600,
                        help="seconds a job may take on a server before it runs elsewhere (default: %(default)s)")
    parser.add_argument("--probe", type=float, default=15,
                        help="seconds between asks whether a down server is back (default: %(default)s)")
    parser.add_argument("--give-up", type=float, default=600,
                        help="stop when no server has answered for this many seconds (default: %(default)s)")
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between looks at each queue")
    return parser.parse_args(argv)


def _progress(board: Board, workers: list[Worker], total: int, skipped: int) -> str:
    servers = " | ".join(f"{w.server.url}: {w.done} done, {w.state}" for w in workers)
    return (f"batch: {board.done + skipped}/{total} done, {board.failed} failed, {len(board.pending)} waiting | "
            f"{servers}")


def run(args: argparse.Namespace) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    if args.manifest is not None:
        manifest = read_manifest(args.manifest)
        write_atomic(args.out / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    elif (args.out / MANIFEST).is_file():
        manifest = json.loads((args.out / MANIFEST).read_text())
    else:
        raise ClientError(f"No manifest given and none in {args.out}; pass the manifest file.")
    identities, jobs = expand(manifest)
    journal = Journal(args.out)
    finished = journal.finished()
    todo = [job for job in jobs if job.id not in finished]
    skipped = len(jobs) - len(todo)
    print(f"batch: {len(jobs)} jobs, {skipped} finished before, {len(todo)} to run on {len(args.server)} "
          f"server(s)", file=sys.stderr)
    board = Board(todo, journal, args.attempts, len(args.server))
    stop = threading.Event()
    workers = [Worker(url, board, identities, args.out, stop, args.depth, args.poll, args.probe,
                      args.request_timeout, args.job_timeout) for url in dict.fromkeys(args.server)]
    began = last_live = time.monotonic()
    for worker in workers:
        worker.start()
    shown, interrupted, gave_up = "", False, False
    try:
        while any(worker.is_alive() for worker in workers):
            line = _progress(board, workers, len(jobs), skipped)
            if line != shown:
                print(line, file=sys.stderr, flush=True)
                shown = line
            if board.live:
                last_live = time.monotonic()
            elif time.monotonic() - last_live > args.give_up:
                gave_up = True
                stop.set()
            time.sleep(args.poll)
    except KeyboardInterrupt:
        interrupted = True
        stop.set()
        for worker in workers:
            worker.join(args.request_timeout)
    records = journal.records()
    rows = write_table(args.out, [records[job.id] for job in jobs if job.id in records])
    sheets = write_contact_sheets(args.out, rows)
    print(_progress(board, workers, len(jobs), skipped), file=sys.stderr)
    for row in rows:
        if row["status"] == "failed":
            print(f"failed: {row['identity']} row {row['row']} seed {row['seed']}: {row['message']}", file=sys.stderr)
    done = sum(row["status"] == "done" for row in rows)
    print(f"{done}/{len(jobs)} done in {time.monotonic() - began:.1f} s; table {args.out / 'results.csv'}; "
          f"contact sheets: {', '.join(str(path) for path in sheets) or 'none'}")
    if interrupted or gave_up:
        print(("interrupted" if interrupted else f"no server answered for {args.give_up:.0f} s") +
              f": run the same command again to finish the {len(jobs) - done} other jobs.", file=sys.stderr)
        return 130 if interrupted else 1
    return 0 if done == len(jobs) else 2


def main(argv=None) -> int:
    try:
        return run(parse_args(argv))
    except ClientError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

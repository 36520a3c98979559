"""The batch client's parts that need no server: the manifest's jobs, the board's retry rules, the journal."""
import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "client"))

from batch_dispatch import Board
from batch_journal import Journal, write_atomic
from batch_manifest import expand, read_manifest
from comfy_server import ClientError


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "a.png").write_bytes(b"photo a")
    (tmp_path / "b.png").write_bytes(b"photo b")
    (tmp_path / "b.safetensors").write_bytes(b"identity b")
    return tmp_path


def _manifest(folder: Path, **changes) -> Path:
    manifest = {"identities": {"a": "a.png", "b": {"file": "b.safetensors", "photo": "b.png"}},
                "defaults": {"steps": 4, "width": 64},
                "rows": [{"prompts": ["p1", "p2"], "seeds": [1, 2, 3]},
                         {"identity": "b", "prompt": "p3", "seeds": [9], "weight": 0.5, "width": 128},
                         {"identity": "a", "prompt": "p1", "seeds": [1]}],  # the same job as one of row 1
                **changes}
    path = folder / "batch.json"
    path.write_text(json.dumps(manifest))
    return path


def test_rows_expand_to_identities_prompts_and_seeds_each_job_once(folder):
    identities, jobs = expand(read_manifest(_manifest(folder)))

    assert identities["b"].file == folder / "b.safetensors" and identities["a"].file is None
    assert len(jobs) == 2 * 2 * 3 + 1
    [special] = [job for job in jobs if job.settings["prompt"] == "p3"]
    assert special.settings == {"steps": 4, "width": 128, "weight": 0.5, "prompt": "p3"} and special.seed == 9
    assert special.workflow.name == "consistentid_sd15_basic.json"


def test_a_job_id_follows_the_files_bytes_and_the_settings_not_the_folder(folder, tmp_path_factory):
    _, jobs = expand(read_manifest(_manifest(folder)))
    copy = tmp_path_factory.mktemp("copy")
    for name in ("a.png", "b.png", "b.safetensors"):
        (copy / name).write_bytes((folder / name).read_bytes())
    _, moved = expand(read_manifest(_manifest(copy)))
    assert [job.id for job in moved] == [job.id for job in jobs]

    (copy / "a.png").write_bytes(b"another photo a")
    _, changed = expand(read_manifest(_manifest(copy, defaults={"steps": 4, "width": 64})))
    assert {j.id for j in changed if j.identity == "b"} == {j.id for j in jobs if j.identity == "b"}
    assert not {j.id for j in changed if j.identity == "a"} & {j.id for j in jobs}


@pytest.mark.parametrize("changes, message", [
    ({"rows": [{"seeds": [1], "prompt": "p", "wieght": 1}]}, "Row 1: unknown key(s) ['wieght']"),
    ({"rows": [{"identity": "c", "prompt": "p", "seeds": [1]}]}, "Row 1: no identity 'c'"),
    ({"rows": [{"prompt": "p", "seeds": []}]}, "Row 1: 'seeds' must be a non-empty list of integers"),
    ({"rows": [{"prompt": "p", "seeds": [1], "base_model": "sd3"}]}, "base_model 'sd3' is not one of"),
    ({"identities": {"a": "nope.png"}}, "nope.png does not exist"),
    ({"identities": {"a": {"file": "a.png"}}}, "is not a .safetensors identity file"),
])
def test_a_bad_manifest_is_refused_before_anything_runs(folder, changes, message):
    with pytest.raises(ClientError, match=re.escape(message)):
        expand(read_manifest(_manifest(folder, **changes)))


def _board(folder, attempts=3, servers=2):
    _, jobs = expand(read_manifest(_manifest(folder)))
    return Board(jobs[:2], Journal(folder), attempts, servers)


def test_a_job_that_fails_waits_for_another_server_and_ends_after_every_server_failed_it(folder):
    board = _board(folder)
    board.mark("A", True)
    board.mark("B", True)
    first = board.take("A", None, None)
    board.put_back(first, "A", "boom on A", failed=True)
    assert board.take("A", None, None).job != first.job  # A gets the other job; this one waits for B
    assert board.take("A", None, None) is None
    again = board.take("B", None, None)
    assert again.job == first.job and again.attempts == 2
    board.put_back(again, "B", "boom on B", failed=True)
    [record] = Journal(folder).records().values()
    assert record["status"] == "failed" and record["tries"] == [["A", "boom on A"], ["B", "boom on B"]]
    assert "2 tries failed; last: boom on B" in record["message"]


def test_a_server_going_down_costs_a_try_and_the_tries_are_bounded(folder):
    board = _board(folder, attempts=2)
    board.mark("A", True)
    attempt = board.take("A", None, None)
    board.put_back(attempt, "A", "server down", failed=False)
    attempt = board.take("A", None, None)
    assert attempt.attempts == 2  # not failed on A: A may run it again
    board.put_back(attempt, "A", "server down", failed=False)
    assert [r["status"] for r in Journal(folder).records().values()] == ["failed"]


def test_a_server_gets_jobs_of_the_models_it_has_loaded_first(folder):
    manifest = json.loads(_manifest(folder).read_text())
    manifest["rows"] = [{"prompt": "p", "seeds": [1, 2], "checkpoint": "x.safetensors"},
                        {"prompt": "p", "seeds": [1, 2], "checkpoint": "y.safetensors"}]
    (folder / "two.json").write_text(json.dumps(manifest))
    _, jobs = expand(read_manifest(folder / "two.json"))
    board = Board(jobs, Journal(folder), 3, 1)
    y = next(job for job in jobs if job.settings["checkpoint"] == "y.safetensors")
    taken = [board.take("A", y.warm_key, "b") for _ in range(8)]
    # The jobs are listed x first; the server that ran y keeps y until none is left, b's before a's.
    assert [t.job.identity for t in taken[:4]] == ["b", "b", "a", "a"]
    assert [t.job.settings["checkpoint"][0] for t in taken] == ["y"] * 4 + ["x"] * 4


def test_the_journal_keeps_the_last_record_and_skips_a_line_cut_short(tmp_path):
    journal = Journal(tmp_path)
    journal.add({"job": "1", "status": "failed"})
    journal.add({"job": "1", "status": "done"})
    journal.add({"job": "2", "status": "done"})
    with open(journal.path, "a") as f:
        f.write('{"job": "3", "sta')
    assert journal.finished() == {"1", "2"}

    write_atomic(tmp_path / "sub" / "x.bin", b"new")
    assert (tmp_path / "sub" / "x.bin").read_bytes() == b"new" and not list((tmp_path / "sub").glob(".*"))

"""The batch manifest: identities (photos or saved identity files) and rows of prompts × seeds with their
settings, expanded into jobs. Paths are relative to the manifest file.

    {"identities": {"anna": "photos/anna.jpg",
                    "ben": {"file": "ben.safetensors", "photo": "photos/ben.jpg"}},
     "defaults": {"steps": 30, "width": 512, "height": 768},
     "rows": [{"prompts": ["A woman, in a forest", "A woman, on a beach"], "seeds": [1, 2, 3]},
              {"identities": ["ben"], "prompt": "A man, in a city", "seeds": [7], "weight": 0.8,
               "base_model": "sdxl", "checkpoint": "sd_xl_base_1.0.safetensors"}]}

A row without ``identities`` (or ``identity``) takes every identity. An identity file's ``photo`` is optional: it is
only the reference FaceSim scores against.
"""
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from comfy_server import ClientError
from job_workflow import SETTINGS

CLIENT_DIR = Path(__file__).resolve().parent
BASE_MODELS = {"sd15": CLIENT_DIR / "consistentid_sd15_basic.json", "sdxl": CLIENT_DIR / "consistentid_sdxl_basic.json"}
ROW_SETTINGS = set(SETTINGS) - {"seed", "prompt"} | {"base_model", "workflow"}
ROW_KEYS = ROW_SETTINGS | {"identity", "identities", "prompt", "prompts", "seeds"}


@dataclass(frozen=True)
class Identity:
    name: str
    photo: Path | None
    file: Path | None

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for path in (self.photo, self.file):
            digest.update(path.read_bytes() if path else b"-")
        return digest.hexdigest()


@dataclass(frozen=True)
class Job:
    id: str
    row: int
    identity: str
    seed: int
    settings: dict  # prompt and every setting the row gives (see job_workflow.SETTINGS), base_model and workflow
    workflow: Path

    @property
    def warm_key(self) -> tuple:
        """Jobs with the same key reuse the models a server has loaded."""
        return str(self.workflow), self.settings.get("checkpoint")


def _file(base: Path, value, what: str) -> Path:
    path = (base / value).resolve()
    if not path.is_file():
        raise ClientError(f"The manifest's {what} {value} does not exist (paths are relative to the manifest).")
    return path


def _identities(base: Path, entries: dict) -> dict[str, Identity]:
    if not isinstance(entries, dict) or not entries:
        raise ClientError("The manifest needs 'identities': a name -> photo path (or {\"file\": identity file, "
                          "\"photo\": optional photo}) map.")
    found = {}
    for name, entry in entries.items():
        if isinstance(entry, str):
            entry = {"photo": entry}
        if not isinstance(entry, dict) or not ({"photo", "file"} & set(entry)) or set(entry) - {"photo", "file"}:
            raise ClientError(f"Identity '{name}': give a photo path, or {{\"file\": ..., \"photo\": ...}}.")
        if "file" in entry and not str(entry["file"]).endswith(".safetensors"):
            raise ClientError(f"Identity '{name}': {entry['file']} is not a .safetensors identity file (one written "
                              "by ConsistentID Save Identity).")
        found[name] = Identity(name, _file(base, entry["photo"], f"photo of '{name}'") if "photo" in entry else None,
                               _file(base, entry["file"], f"identity file of '{name}'") if "file" in entry else None)
    return found


def _list(row: dict, one: str, many: str, number: int) -> list:
    if one in row and many in row:
        raise ClientError(f"Row {number}: give '{one}' or '{many}', not both.")
    values = [row[one]] if one in row else row.get(many)
    if not isinstance(values, list) or not values:
        raise ClientError(f"Row {number}: '{many}' must be a non-empty list.")
    return values


def read_manifest(path: Path) -> dict:
    """The manifest with its paths made absolute, as the output folder keeps it for a re-run."""
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ClientError(f"The manifest {path} cannot be read ({err}).") from None
    base = path.resolve().parent
    if isinstance(manifest.get("identities"), dict):
        manifest["identities"] = {
            name: str(base / entry) if isinstance(entry, str) else
            {key: str(base / value) for key, value in entry.items()} if isinstance(entry, dict) else entry
            for name, entry in manifest["identities"].items()}
    for row in [manifest.get("defaults", {}), *manifest.get("rows", [])]:
        if isinstance(row, dict) and "workflow" in row:
            row["workflow"] = str(base / row["workflow"])
    return manifest


def expand(manifest: dict) -> tuple[dict[str, Identity], list[Job]]:
    """The identities and the jobs (identity × prompt × seed per row, each once) of a manifest from
    :func:`read_manifest`."""
    base = Path("/")
    identities = _identities(base, manifest.get("identities"))
    defaults = manifest.get("defaults", {})
    if set(defaults) - ROW_KEYS:
        raise ClientError(f"Unknown default(s) {sorted(set(defaults) - ROW_KEYS)}; known: {sorted(ROW_KEYS)}.")
    rows = manifest.get("rows") or [{}]
    shas = {name: identity.sha256() for name, identity in identities.items()}
    workflows: dict[Path, str] = {}
    jobs = {}
    for number, row in enumerate(rows, start=1):
        row = {**defaults, **row}
        if set(row) - ROW_KEYS:
            raise ClientError(f"Row {number}: unknown key(s) {sorted(set(row) - ROW_KEYS)}; known: {sorted(ROW_KEYS)}.")
        names = _list(row, "identity", "identities", number) if {"identity", "identities"} & set(row) \
            else list(identities)
        for name in names:
            if name not in identities:
                raise ClientError(f"Row {number}: no identity '{name}' in the manifest's identities.")
        prompts = _list(row, "prompt", "prompts", number)
        seeds = row.get("seeds")
        if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
            raise ClientError(f"Row {number}: 'seeds' must be a non-empty list of integers.")
        base_model = row.get("base_model", "sd15")
        if base_model not in BASE_MODELS:
            raise ClientError(f"Row {number}: base_model '{base_model}' is not one of {sorted(BASE_MODELS)}.")
        workflow = _file(base, row["workflow"], "workflow") if "workflow" in row else BASE_MODELS[base_model]
        workflows.setdefault(workflow, hashlib.sha256(workflow.read_bytes()).hexdigest())
        settings = {key: row[key] for key in ROW_SETTINGS - {"workflow"} if key in row}
        for name in names:
            for prompt in prompts:
                for seed in seeds:
                    job_settings = {**settings, "prompt": prompt}
                    key = json.dumps([shas[name], workflows[workflow], seed, job_settings], sort_keys=True)
                    job_id = hashlib.sha256(key.encode()).hexdigest()[:16]
                    jobs.setdefault(job_id, Job(job_id, number, name, seed, job_settings, workflow))
    return identities, list(jobs.values())

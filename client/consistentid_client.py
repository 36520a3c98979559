"""Run ConsistentID on a running ComfyUI without its browser UI, one image per seed, and score each with FaceSim.

    python consistentid_client.py photo.jpg --prompt "A man, in a forest" --seeds 1 2 3 --url http://127.0.0.1:8188

It uploads the photo, queues the pack's basic example workflow (``consistentid_sd15_basic.json`` beside this
file, or ``--workflow``: any API-format export with the same nodes) with a ConsistentID FaceSim node added,
shows each node and sampling step while it runs, and writes into ``--out`` the images (``seed_<seed>.png``) and
the FaceSim of each against the photo (``facesim.csv`` and ``facesim.json``).

Needs Python 3.10+ and ``websocket-client`` (``pip install websocket-client``); the models are the ComfyUI
server's.
"""
import argparse
import csv
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

try:
    import websocket
except ImportError:  # reported when the client connects, after --help and the argument checks
    websocket = None

DEFAULT_WORKFLOW = Path(__file__).resolve().parent / "consistentid_sd15_basic.json"
# The nodes of the basic example whose inputs the options set; each must be in the workflow exactly once.
REQUIRED = ("CheckpointLoaderSimple", "ConsistentIDApply", "ConsistentIDFaceEncode", "ConsistentIDFacialEncoder",
            "EmptyLatentImage", "KSampler", "SaveImage")
# The merge node: ConsistentID Merge Step, or in exports made before it its predecessor (same settings).
MERGE = ("ConsistentIDMergeStep", "ConsistentIDMergeStepScheduler")


class ClientError(Exception):
    """What went wrong, in words for the command line."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("photo", type=Path, help="photo of one face")
    parser.add_argument("--prompt", required=True, help="what to generate, e.g. 'A man, in a forest'")
    parser.add_argument("--seeds", type=int, nargs="+", required=True, help="one image per seed")
    parser.add_argument("--url", default="http://127.0.0.1:8188", help="the ComfyUI server (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("consistentid_out"),
                        help="folder for the images and the table (default: %(default)s)")
    parser.add_argument("--negative", help="negative prompt (default: the workflow's)")
    parser.add_argument("--steps", type=int, help="sampling steps (default: the workflow's, 50)")
    parser.add_argument("--cfg", type=float, help="CFG scale (default: the workflow's, 5.0)")
    parser.add_argument("--width", type=int, help="image width (default: the workflow's, 512)")
    parser.add_argument("--height", type=int, help="image height (default: the workflow's, 768)")
    parser.add_argument("--weight", type=float, help="ConsistentID weight (default: the workflow's, 1.0)")
    parser.add_argument("--merge-step", type=int,
                        help="ConsistentID merge step, where sampling switches from the text-only to the facial "
                             "prompt (default: the workflow's 30 of 50, scaled to --steps)")
    parser.add_argument("--checkpoint", help="SD1.5 checkpoint in the server's models/checkpoints "
                                             "(default: the workflow's, v1-5-pruned-emaonly.safetensors)")
    parser.add_argument("--workflow", type=Path, default=DEFAULT_WORKFLOW,
                        help="API-format workflow to run (default: the pack's basic example)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait for a message from the server")
    return parser.parse_args(argv)


class Server:
    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.client_id = uuid.uuid4().hex

    def _open(self, request: urllib.request.Request | str):
        try:
            return urllib.request.urlopen(request, timeout=60)
        except urllib.error.HTTPError as err:
            raise ClientError(f"{self.url} answered {err.code}: {err.read().decode(errors='replace')[:2000]}") from None
        except urllib.error.URLError as err:
            raise ClientError(f"ComfyUI is not reachable at {self.url} ({err.reason}); start it or pass --url.") \
                from None

    def get_json(self, path: str):
        with self._open(self.url + path) as reply:
            return json.load(reply)

    def post_json(self, path: str, payload: dict):
        request = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        with self._open(request) as reply:
            return json.load(reply)

    def upload(self, photo: Path) -> str:
        """The photo in the server's input folder; its name as LoadImage takes it."""
        boundary = uuid.uuid4().hex
        body = b"".join([
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{photo.name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n".encode(), photo.read_bytes(),
            f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"overwrite\"\r\n\r\ntrue\r\n"
            f"--{boundary}--\r\n".encode()])
        request = urllib.request.Request(self.url + "/upload/image", data=body,
                                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with self._open(request) as reply:
            uploaded = json.load(reply)
        return f"{uploaded['subfolder']}/{uploaded['name']}" if uploaded.get("subfolder") else uploaded["name"]

    def download(self, image: dict) -> bytes:
        query = urllib.parse.urlencode({k: image[k] for k in ("filename", "subfolder", "type")})
        with self._open(f"{self.url}/view?{query}") as reply:
            return reply.read()

    def connect(self, timeout: float):
        """The websocket on which the server reports this client's prompts; ``recv`` waits at most ``timeout``."""
        if websocket is None:
            raise ClientError("The client needs websocket-client: pip install websocket-client")
        address = urllib.parse.urlsplit(self.url)
        scheme = "wss" if address.scheme == "https" else "ws"
        try:
            return websocket.create_connection(
                f"{scheme}://{address.netloc}{address.path}/ws?clientId={self.client_id}", timeout=timeout)
        except (OSError, websocket.WebSocketException) as err:
            raise ClientError(f"No websocket at {self.url}/ws ({err}).") from None


def _only(prompt: dict, *class_types: str) -> str:
    ids = [node_id for node_id, node in prompt.items() if node["class_type"] in class_types]
    if len(ids) != 1:
        raise ClientError(f"The workflow has {len(ids)} {' or '.join(class_types)} nodes; the client needs exactly "
                          "one. Use the pack's basic example (the default) or an API export shaped like it.")
    return ids[0]


def build_prompt(workflow: dict, photo: str, seed: int, args: argparse.Namespace) -> tuple[dict, str, str]:
    """``(prompt, SaveImage id, FaceSim id)``: the workflow with the options set and a FaceSim of the saved images
    against the photo added."""
    prompt = json.loads(json.dumps(workflow))
    ids = {class_type: _only(prompt, class_type) for class_type in REQUIRED}
    ids["merge"] = _only(prompt, *MERGE)
    inputs = {class_type: prompt[node_id]["inputs"] for class_type, node_id in ids.items()}
    face = inputs["ConsistentIDFaceEncode"]
    prompt[face["image"][0]]["inputs"]["image"] = photo
    merge = inputs["merge"]
    if args.steps is not None and args.merge_step is None:
        # The facial prompt needs a step after the merge step.
        merge["merge_step"] = min(round(merge["merge_step"] * args.steps / merge["steps"]), args.steps - 2)
    settings = {
        "KSampler": {"seed": seed, "steps": args.steps, "cfg": args.cfg},
        # The scheduler must plan the same steps as the sampler.
        "merge": {"steps": args.steps, "merge_step": args.merge_step},
        "ConsistentIDFacialEncoder": {"prompt": args.prompt, "negative_prompt": args.negative},
        "EmptyLatentImage": {"width": args.width, "height": args.height, "batch_size": 1},
        "ConsistentIDApply": {"weight": args.weight},
        "CheckpointLoaderSimple": {"ckpt_name": args.checkpoint},
    }
    for class_type, values in settings.items():
        inputs[class_type].update({key: value for key, value in values.items() if value is not None})
    facesim = str(max(int(node_id) for node_id in prompt if node_id.isdigit()) + 1)
    prompt[facesim] = {"class_type": "ConsistentIDFaceSim", "_meta": {"title": "FaceSim"},
                       "inputs": {"insightface": face["insightface"], "reference": face["image"],
                                  "images": inputs["SaveImage"]["images"]}}
    return prompt, ids["SaveImage"], facesim


def _titles(prompt: dict) -> dict[str, str]:
    return {node_id: node.get("_meta", {}).get("title") or node["class_type"] for node_id, node in prompt.items()}


def run_prompt(server: Server, connection, prompt: dict, label: str) -> dict:
    """Queue ``prompt``, print its nodes and steps as they run, and return its history entry."""
    try:
        queued = server.post_json("/prompt", {"prompt": prompt, "client_id": server.client_id})
    except ClientError as err:
        raise ClientError(f"{label}: the server refused the workflow. {err}") from None
    prompt_id, titles = queued["prompt_id"], _titles(prompt)
    print(f"{label}: queued ({prompt_id})", file=sys.stderr)
    while True:
        try:
            message = connection.recv()
        except websocket.WebSocketTimeoutException:
            raise ClientError(f"{label}: no word from the server for {connection.gettimeout():.0f} s.") from None
        if not isinstance(message, str):
            continue  # binary frames are sampler previews
        message = json.loads(message)
        kind, data = message["type"], message.get("data") or {}
        if data.get("prompt_id") != prompt_id:
            continue
        if kind == "executing" and data.get("node") is None:
            break
        if kind == "executing":
            print(f"{label}: {titles.get(data['node'], data['node'])}", file=sys.stderr)
        elif kind == "progress":
            print(f"{label}: {titles.get(data.get('node'), 'step')} {data['value']}/{data['max']}", file=sys.stderr)
        elif kind == "execution_error":
            raise ClientError(f"{label}: {data.get('node_type')} failed: {data.get('exception_message', '').strip()}")
        elif kind == "execution_interrupted":
            raise ClientError(f"{label}: the run was interrupted on the server.")
    return server.get_json(f"/history/{prompt_id}")[prompt_id]


def write_table(out: Path, rows: list[dict]) -> None:
    (out / "facesim.json").write_text(json.dumps(rows, indent=2) + "\n")
    with open(out / "facesim.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["seed", "image", "facesim", "face"])
        writer.writeheader()
        writer.writerows(rows)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if not args.photo.is_file():
            raise ClientError(f"The photo {args.photo} does not exist.")
        workflow = json.loads(args.workflow.read_text())
        server = Server(args.url)
        photo = server.upload(args.photo)
        args.out.mkdir(parents=True, exist_ok=True)
        connection = server.connect(args.timeout)
        rows = []
        try:
            for number, seed in enumerate(args.seeds, start=1):
                prompt, save, facesim = build_prompt(workflow, photo, seed, args)
                entry = run_prompt(server, connection, prompt, f"seed {seed} ({number}/{len(args.seeds)})")
                [image] = entry["outputs"][save]["images"]
                [score] = entry["outputs"][facesim]["facesim"]
                path = args.out / f"seed_{seed}.png"
                path.write_bytes(server.download(image))
                rows.append({"seed": seed, "image": path.name, "facesim": score["facesim"], "face": score["face"]})
        finally:
            connection.close()
        write_table(args.out, rows)
    except ClientError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for row in rows:
        score = "no face" if row["facesim"] is None else f"{row['facesim']:.4f}"
        print(f"seed {row['seed']}: FaceSim {score}  {args.out / row['image']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

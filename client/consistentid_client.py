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
from pathlib import Path

from comfy_server import ClientError, Refused, Server, websocket
from job_workflow import build_prompt

DEFAULT_WORKFLOW = Path(__file__).resolve().parent / "consistentid_sd15_basic.json"


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


def _titles(prompt: dict) -> dict[str, str]:
    return {node_id: node.get("_meta", {}).get("title") or node["class_type"] for node_id, node in prompt.items()}


def run_prompt(server: Server, connection, prompt: dict, label: str) -> dict:
    """Queue ``prompt``, print its nodes and steps as they run, and return its history entry."""
    try:
        queued = server.post_json("/prompt", {"prompt": prompt, "client_id": server.client_id})
    except Refused as err:
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


def settings(args: argparse.Namespace, seed: int) -> dict:
    return {"seed": seed, "steps": args.steps, "cfg": args.cfg, "prompt": args.prompt, "negative": args.negative,
            "width": args.width, "height": args.height, "weight": args.weight, "merge_step": args.merge_step,
            "checkpoint": args.checkpoint}


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
                prompt, save, facesim = build_prompt(workflow, {"photo": photo}, settings(args, seed))
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

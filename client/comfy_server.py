"""One ComfyUI server as the clients see it: its HTTP API (/prompt, /queue, /history, /upload/image, /view) and
its websocket."""
import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

try:
    import websocket
except ImportError:  # only the one-photo client needs it; reported when it connects
    websocket = None


class ClientError(Exception):
    """What went wrong, in words for the command line."""


class ServerDown(ClientError):
    """The server did not answer (refused, closed or timed out): a fault of the server, not of the job."""


class Refused(ClientError):
    """The server answered with an HTTP error; ``body`` is its JSON answer where it gave one."""

    def __init__(self, message: str, body: dict | None):
        super().__init__(message)
        self.body = body or {}


class Server:
    def __init__(self, url: str, timeout: float = 60):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.client_id = uuid.uuid4().hex

    def _open(self, request: urllib.request.Request | str):
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as err:
            text = err.read().decode(errors="replace")
            try:
                body = json.loads(text)
            except ValueError:
                body = None
            raise Refused(f"{self.url} answered {err.code}: {text[:2000]}", body) from None
        except urllib.error.URLError as err:
            raise ServerDown(f"ComfyUI is not reachable at {self.url} ({err.reason}); start it or pass its URL.") \
                from None

    def _read(self, request, parse=json.load):
        # A timeout or a dropped connection, while connecting or while reading the answer.
        try:
            with self._open(request) as reply:
                return parse(reply)
        except (TimeoutError, ConnectionError, http.client.HTTPException) as err:
            raise ServerDown(f"{self.url} stopped answering ({err or type(err).__name__}).") from None

    def get_json(self, path: str):
        return self._read(self.url + path)

    def post_json(self, path: str, payload: dict):
        request = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        return self._read(request, lambda reply: json.loads(reply.read() or b"null"))

    def upload(self, path: Path, name: str | None = None, subfolder: str = "") -> str:
        """``path`` in the server's input folder (as ``name`` in ``subfolder``); its name as LoadImage takes it."""
        boundary = uuid.uuid4().hex
        fields = {"overwrite": "true", "type": "input", "subfolder": subfolder}
        body = b"".join([
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name or path.name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n".encode(), path.read_bytes(), b"\r\n",
            *(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{key}\"\r\n\r\n{value}\r\n".encode()
              for key, value in fields.items()),
            f"--{boundary}--\r\n".encode()])
        request = urllib.request.Request(self.url + "/upload/image", data=body,
                                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        uploaded = self._read(request)
        return f"{uploaded['subfolder']}/{uploaded['name']}" if uploaded.get("subfolder") else uploaded["name"]

    def download(self, image: dict) -> bytes:
        query = urllib.parse.urlencode({k: image[k] for k in ("filename", "subfolder", "type")})
        return self._read(f"{self.url}/view?{query}", lambda reply: reply.read())

    def queue_prompt(self, prompt: dict) -> str:
        return self.post_json("/prompt", {"prompt": prompt, "client_id": self.client_id})["prompt_id"]

    def queue(self) -> list[str]:
        """Ids of the prompts running or waiting on the server, from every client."""
        queue = self.get_json("/queue")
        return [item[1] for item in queue["queue_running"] + queue["queue_pending"]]

    def history(self, prompt_id: str) -> dict | None:
        return self.get_json(f"/history/{prompt_id}").get(prompt_id)

    def delete_pending(self, prompt_ids: list[str]) -> None:
        self.post_json("/queue", {"delete": prompt_ids})

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


def refusal_text(err: Refused) -> str:
    """The server's own words for a refused prompt: each node's validation errors, else its error message."""
    messages = [f"{node.get('class_type', node_id)}: {e['message']}" + (f" ({e['details']})" if e.get("details") else "")
                for node_id, node in err.body.get("node_errors", {}).items() for e in node.get("errors", [])]
    if messages:
        return "; ".join(messages)
    error = err.body.get("error")
    return (f"{error.get('message', '')} {error.get('details', '')}".strip() if isinstance(error, dict)
            else str(err))

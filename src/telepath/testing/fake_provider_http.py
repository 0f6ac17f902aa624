"""A fake of the providers' REST endpoints used to validate credentials, for synchronous tests.

``FakeProviderHttp`` is a stdlib ``ThreadingHTTPServer`` on ``127.0.0.1`` (port 0 by default)
running in a daemon thread, so it can be started from plain synchronous pytest fixtures::

    with FakeProviderHttp() as fake:
        settings = Settings(openai_api_base=fake.openai_api_base,
                            elevenlabs_api_base=fake.elevenlabs_api_base)

Endpoints and bodies follow ``reference/providers.md`` §2.10 and §3.10.

OpenAI, ``GET /v1/models/{model}`` (and ``GET /v1/models``) with ``Authorization: Bearer <key>``.
The answer is chosen by the key (``-`` and ``_`` are interchangeable in the prefixes):

======================  =====================================================================
key starts with         answer
======================  =====================================================================
``sk-valid``            200 model object; 404 ``model_not_found`` if the model id starts with
                        ``missing`` (e.g. ``missing-model``)
``sk-restricted``       403 (restricted key without ``api.model.read``)
``sk-ratelimited``      429 ``rate_limit_exceeded``
``sk-outage``           503
anything else / none    401 ``invalid_api_key`` with OpenAI's documented body
======================  =====================================================================

ElevenLabs, ``GET /v1/convai/agents/{agent_id}`` and
``GET /v1/convai/conversation/get-signed-url?agent_id=...`` with ``xi-api-key: <key>``:

======================  =====================================================================
key starts with         answer
======================  =====================================================================
``sk-valid``            200 agent (both endpoints); 404 if the agent id is ``agent_missing``,
                        422 if it is ``agent_invalid``
``sk-restricted``       agent read: 401 ``missing_permissions``; signed URL: 200 (a scoped key
                        that can start conversations but not read agents)
``sk-noperm``           401 ``missing_permissions`` on both
``sk-outage``           503 on both
anything else / none    401 ``invalid_api_key``
======================  =====================================================================

The signed URL points at ``elevenlabs_ws_url`` (a constructor argument; defaults to an
unreachable ``ws://127.0.0.1:9/...``) with ``agent_id`` and a ``conversation_signature``. The
200 agent body announces ``ulaw_8000`` both ways unless ``agent_formats`` says otherwise, and
``platform_settings.overrides`` with every override field off — ElevenLabs' default: each must be
enabled in the agent's Security settings, or a conversation that sends it is refused
(providers.md §3.3) — but those ``agent_overrides`` enables for that agent (dotted paths under
``conversation_config_override``, e.g. ``PROMPT_OVERRIDE``).

Every request is appended to ``requests`` (method, path, query, headers, the client's address)
for assertions. ``hold_answers()`` makes it a slow provider: requests are recorded, then
answered only once the event it returns is set. ``split_body_pause_s`` makes each answer's body
arrive in two parts that long apart (as through a proxy, or in two TLS records): a client must
read to the end of the body, not take what the first read returns.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

__all__ = [
    "PROMPT_OVERRIDE",
    "FakeProviderHttp",
    "RecordedRequest",
    "elevenlabs_agent_answer",
    "elevenlabs_overrides",
    "elevenlabs_signed_url_answer",
    "openai_model_answer",
]

JsonBody = dict[str, Any]
Answer = tuple[int, JsonBody]

PROMPT_OVERRIDE = "agent.prompt.prompt"
"""The system prompt's override, as a dotted path under ``conversation_config_override``."""

# The override fields the agent body lists (those the gateway could send and a few more), each a
# dotted path under ``platform_settings.overrides.conversation_config_override``.
_OVERRIDE_FIELDS = (
    PROMPT_OVERRIDE,
    "agent.first_message",
    "agent.language",
    "tts.voice_id",
    "conversation.text_only",
)

HOLD_MAX_S = 30.0  # a held answer is sent anyway after this long (a test that forgot to set it)


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the fake saw it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    peer: tuple[str, int] = ("", 0)  # the client's address: one per TCP connection


def _kind(key: str | None) -> str:
    """Classify a key by its prefix: valid, restricted, ratelimited, noperm, outage or invalid."""
    if not key:
        return "invalid"
    norm = key.replace("_", "-")
    for kind in ("valid", "restricted", "ratelimited", "noperm", "outage"):
        if norm.startswith(f"sk-{kind}"):
            return kind
    return "invalid"


def _openai_error(message: str, type_: str, code: str | None) -> JsonBody:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def openai_model_answer(authorization: str | None, model: str | None) -> Answer:
    """Status and body of OpenAI's ``GET /v1/models/{model}`` for this Authorization header.

    Args:
        authorization: the raw ``Authorization`` header value, or ``None``.
        model: the model id from the path, or ``None`` for the list endpoint.

    Returns:
        ``(status, json_body)`` as described in the module docstring.
    """
    key = None
    if authorization and authorization.startswith("Bearer "):
        key = authorization.removeprefix("Bearer ").strip()
    kind = _kind(key)
    if kind == "valid":
        if model is None:
            data = [{"id": "gpt-realtime", "object": "model", "created": 1, "owned_by": "system"}]
            return 200, {"object": "list", "data": data}
        if model.startswith("missing"):
            return 404, _openai_error(
                f"The model `{model}` does not exist or you do not have access to it.",
                "invalid_request_error",
                "model_not_found",
            )
        return 200, {"id": model, "object": "model", "created": 1, "owned_by": "system"}
    if kind == "restricted":
        return 403, _openai_error(
            "You have insufficient permissions for this operation. Missing scopes: api.model.read.",
            "invalid_request_error",
            None,
        )
    if kind == "ratelimited":
        return 429, _openai_error(
            "Rate limit reached for requests", "requests", "rate_limit_exceeded"
        )
    if kind == "outage":
        return 503, _openai_error("The server is overloaded.", "server_error", None)
    if key is None:
        return 401, _openai_error("You didn't provide an API key.", "invalid_request_error", None)
    return 401, _openai_error(
        "Incorrect API key provided: sk-****. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        "invalid_request_error",
        "invalid_api_key",
    )


def _el_detail(status: str, message: str) -> JsonBody:
    return {"detail": {"status": status, "message": message}}


_EL_INVALID = _el_detail("invalid_api_key", "Invalid API key")
_EL_NO_PERMISSION = _el_detail(
    "missing_permissions",
    "The API key you used is missing the permission convai_read to execute this operation.",
)


def _el_agent_id_problem(agent_id: str) -> Answer | None:
    if agent_id == "agent_missing":
        return 404, _el_detail("agent_not_found", "Agent not found")
    if agent_id == "agent_invalid":
        return 422, {"detail": [{"loc": ["path", "agent_id"], "msg": "invalid agent id"}]}
    return None


def elevenlabs_overrides(allowed: Collection[str] = ()) -> JsonBody:
    """An agent's ``platform_settings.overrides``: which fields a conversation may override.

    Args:
        allowed: the enabled fields, dotted paths under ``conversation_config_override`` (e.g.
            ``PROMPT_OVERRIDE``); every other field is ``false``, as on a new agent.
    """
    fields: JsonBody = {}
    for path in (*_OVERRIDE_FIELDS, *sorted(set(allowed) - set(_OVERRIDE_FIELDS))):
        *parents, leaf = path.split(".")
        node = fields
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = path in allowed
    return {
        "conversation_config_override": fields,
        "custom_llm_extra_body": False,
        "enable_conversation_initiation_client_data_from_webhook": False,
    }


def elevenlabs_agent_answer(
    key: str | None,
    agent_id: str,
    formats: tuple[str, str] = ("ulaw_8000", "ulaw_8000"),
    allowed_overrides: Collection[str] = (),
) -> Answer:
    """Status and body of ElevenLabs' ``GET /v1/convai/agents/{agent_id}``.

    Args:
        key: the ``xi-api-key`` header value, or ``None``.
        agent_id: the agent id from the path.
        formats: ``(user_input_audio_format, agent_output_audio_format)`` to announce.
        allowed_overrides: the override fields the agent enables (see ``elevenlabs_overrides``).

    Returns:
        ``(status, json_body)`` as described in the module docstring.
    """
    kind = _kind(key)
    if kind == "outage":
        return 503, {"detail": "Service unavailable"}
    if kind in ("restricted", "noperm"):
        return 401, _EL_NO_PERMISSION
    if kind != "valid":
        return 401, _EL_INVALID
    problem = _el_agent_id_problem(agent_id)
    if problem is not None:
        return problem
    return 200, {
        "agent_id": agent_id,
        "name": "Fake agent",
        "conversation_config": {
            "asr": {"user_input_audio_format": formats[0]},
            "tts": {"agent_output_audio_format": formats[1]},
            "conversation": {"max_duration_seconds": 600},
        },
        "platform_settings": {
            "auth": {"enable_auth": True},
            "overrides": elevenlabs_overrides(allowed_overrides),
        },
    }


def elevenlabs_signed_url_answer(key: str | None, agent_id: str | None, ws_url: str) -> Answer:
    """Status and body of ElevenLabs' ``GET /v1/convai/conversation/get-signed-url``.

    Args:
        key: the ``xi-api-key`` header value, or ``None``.
        agent_id: the ``agent_id`` query parameter, or ``None`` when missing.
        ws_url: the conversation WebSocket URL the signed URL should point at.

    Returns:
        ``(status, json_body)``; the body's ``signed_url`` carries ``agent_id`` and a
        ``conversation_signature``.
    """
    kind = _kind(key)
    if kind == "outage":
        return 503, {"detail": "Service unavailable"}
    if kind == "noperm":
        return 401, _EL_NO_PERMISSION
    if kind not in ("valid", "restricted"):
        return 401, _EL_INVALID
    if not agent_id:
        return 422, {"detail": [{"loc": ["query", "agent_id"], "msg": "field required"}]}
    problem = _el_agent_id_problem(agent_id)
    if problem is not None:
        return problem
    query = urlencode({"agent_id": agent_id, "conversation_signature": "fake-signature"})
    return 200, {"signed_url": f"{ws_url}?{query}"}


@dataclass
class _Config:
    elevenlabs_ws_url: str
    agent_formats: dict[str, tuple[str, str]] = field(default_factory=dict)
    agent_overrides: dict[str, frozenset[str]] = field(default_factory=dict)
    requests: list[RecordedRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    hold: threading.Event | None = None
    split_body_pause_s: float | None = None


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    # headers and body are two writes: on a kept-alive connection Nagle holds the body until
    # the client's delayed ACK (40 ms), which a real API does not do
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        return  # keep test output clean; requests are recorded instead

    def _send(self, status: int, body: JsonBody) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        pause = self.server.config.split_body_pause_s
        if pause is None or len(data) < 2:
            self.wfile.write(data)
            return
        half = len(data) // 2  # two writes, each sent at once (no Nagle): two segments
        self.wfile.write(data[:half])
        self.wfile.flush()
        time.sleep(pause)
        self.wfile.write(data[half:])

    def do_GET(self) -> None:
        cfg = self.server.config
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        headers = {k.lower(): v for k, v in self.headers.items()}
        with cfg.lock:
            peer = (str(self.client_address[0]), int(self.client_address[1]))
            cfg.requests.append(RecordedRequest("GET", parts.path, query, headers, peer))
            hold = cfg.hold
        if hold is not None:
            hold.wait(timeout=HOLD_MAX_S)
        path = parts.path
        if path == "/v1/models":
            self._send(*openai_model_answer(headers.get("authorization"), None))
        elif path.startswith("/v1/models/"):
            model = unquote(path.removeprefix("/v1/models/"))
            self._send(*openai_model_answer(headers.get("authorization"), model))
        elif path.startswith("/v1/convai/agents/"):
            agent_id = unquote(path.removeprefix("/v1/convai/agents/"))
            formats = cfg.agent_formats.get(agent_id, ("ulaw_8000", "ulaw_8000"))
            allowed = cfg.agent_overrides.get(agent_id, frozenset())
            key = headers.get("xi-api-key")
            self._send(*elevenlabs_agent_answer(key, agent_id, formats, allowed))
        elif path == "/v1/convai/conversation/get-signed-url":
            self._send(
                *elevenlabs_signed_url_answer(
                    headers.get("xi-api-key"), query.get("agent_id"), cfg.elevenlabs_ws_url
                )
            )
        else:
            self._send(404, {"detail": "Not Found"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], config: _Config) -> None:
        super().__init__(address, _Handler)
        self.config = config


class FakeProviderHttp:
    """OpenAI and ElevenLabs credential-check endpoints on a local port, in a thread.

    Args:
        host: the address to bind (loopback by default).
        port: the port to bind; 0 picks a free one.
        elevenlabs_ws_url: where signed URLs point (e.g. a ``FakeElevenLabs`` WebSocket URL).
        agent_formats: per-agent ``(input, output)`` audio formats for the agent body.
        agent_overrides: per-agent override fields enabled (dotted paths, e.g.
            ``PROMPT_OVERRIDE``); none for an agent not named, as ElevenLabs' default.
        tls: a server context to serve ``https://`` (each connection's handshake runs in its
            own thread). Connections are kept alive between requests (HTTP/1.1), as the
            providers' APIs do.
        split_body_pause_s: send each answer's body in two parts this long apart (``None``:
            at once); settable while running.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        elevenlabs_ws_url: str = "ws://127.0.0.1:9/v1/convai/conversation",
        agent_formats: dict[str, tuple[str, str]] | None = None,
        agent_overrides: Mapping[str, Collection[str]] | None = None,
        tls: ssl.SSLContext | None = None,
        split_body_pause_s: float | None = None,
    ) -> None:
        self._tls = tls
        self._address = (host, port)
        overrides = {agent: frozenset(paths) for agent, paths in (agent_overrides or {}).items()}
        self._config = _Config(elevenlabs_ws_url, dict(agent_formats or {}), overrides)
        self._config.split_body_pause_s = split_body_pause_s
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        """Bind and serve in a daemon thread. Returns ``self`` for chaining."""
        if self._server is not None:
            return self
        self._server = _Server(self._address, self._config)
        if self._tls is not None:
            self._server.socket = self._tls.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # stop() waits up to one poll interval
            name="fake-provider-http",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port (idempotent)."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` (``https`` with ``tls``), the server root."""
        if self._server is None:
            raise RuntimeError("FakeProviderHttp is not started")
        host, port = self._server.server_address[:2]
        return f"{'https' if self._tls is not None else 'http'}://{host!s}:{port}"

    @property
    def openai_api_base(self) -> str:
        """Value for ``TELEPATH_OPENAI_API_BASE`` (``{url}/v1``)."""
        return f"{self.url}/v1"

    @property
    def elevenlabs_api_base(self) -> str:
        """Value for ``TELEPATH_ELEVENLABS_API_BASE`` (``{url}``)."""
        return self.url

    def hold_answers(self) -> threading.Event:
        """From now on, record each request but answer it only once the returned event is set
        (at most ``HOLD_MAX_S`` later): a slow provider, to observe what a caller does while
        it waits."""
        hold = threading.Event()
        with self._config.lock:
            self._config.hold = hold
        return hold

    @property
    def split_body_pause_s(self) -> float | None:
        """The pause between the two parts of each answer's body (``None``: sent at once)."""
        return self._config.split_body_pause_s

    @split_body_pause_s.setter
    def split_body_pause_s(self, pause_s: float | None) -> None:
        with self._config.lock:
            self._config.split_body_pause_s = pause_s

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far."""
        with self._config.lock:
            return list(self._config.requests)

"""
Chat in the browser: `python chat_bio.py --ckpt=ckpt_finetune.pt --web`.

A small FastAPI app: the page (chat_web.html) and an HTTP API (/api/info, /api/chat as
server-sent events, /api/stop) around the terminal's wigglegpt.chat.Chat, so the prompt, its
trimming and the stop strings are the terminal's. Replies are written one at a time on one
worker thread, in the order asked, while the event loop stays free. The API: README.md,
"Chat in the browser".
"""

import asyncio
import json
import os
import secrets
import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from wigglegpt.chat import STOP_STRINGS, fit_conversation
from wigglegpt.checkpoint import unwrap
from wigglegpt.engine import SAMPLING, check_options, generate, stream_text
from wigglegpt.common import UserError
from wigglegpt.tokenizer import EOT, VOCAB_SIZE, get_tokenizer

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "chat_web.html")
INSTALL = "pip install -r requirements-optional.txt"
MAX_BODY_BYTES = 1 << 20  # far above any conversation a context of a few thousand tokens can use
MAX_MESSAGES = 1000
OPTIONS = SAMPLING + ("max_new_tokens", "seed")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
KEEPALIVE_S = 5.0  # a comment line while a reply waits its turn keeps proxies from timing out
JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
              bool: "a boolean", type(None): "null"}
# the page may only talk to this server and run its own inline script
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
                "style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'",
                "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}


def require(name):
    """Import an optional package, or say in one line how to install it."""
    import importlib
    try:
        return importlib.import_module(name)
    except ImportError:
        raise UserError(f"the web chat needs {name}: {INSTALL}") from None


class BadRequest(Exception):
    """A request we refuse: the status and one line saying why."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------------------------
# reading a chat request

def parse_json(body):
    def refuse_constant(name):  # Python's json reads NaN and Infinity, which JSON has not
        raise BadRequest(f"invalid JSON: {name} is not a JSON number")
    try:
        return json.loads(body, parse_constant=refuse_constant)
    except RecursionError:
        raise BadRequest("invalid JSON: nested too deeply") from None
    except UnicodeDecodeError:
        raise BadRequest("invalid JSON: the body is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise BadRequest(f"invalid JSON: {e}") from None


def read_messages(messages):
    """Check the conversation; return (system prompt, the other messages). User and assistant
    texts are stripped, as the terminal chat strips what is typed and keeps replies stripped,
    so a page's conversation gives the prompt the terminal's would, id for id."""
    if messages is None:
        raise BadRequest("missing 'messages': a list of {\"role\": ..., \"content\": ...}")
    if not isinstance(messages, list):
        raise BadRequest(f"'messages' must be an array, got {JSON_TYPES.get(type(messages), 'something else')}")
    if not messages:
        raise BadRequest("'messages' is empty: send at least the user's message")
    if len(messages) > MAX_MESSAGES:
        raise BadRequest(f"the conversation has {len(messages)} messages; at most {MAX_MESSAGES} are accepted", 413)
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise BadRequest(f"message {i} must be an object with exactly the keys 'role' and 'content'")
        role, content = message["role"], message["content"]
        if role not in ("system", "user", "assistant"):
            raise BadRequest(f"message {i} has unknown role {role!r}; use system, user or assistant")
        if not isinstance(content, str):
            raise BadRequest(f"message {i} content must be a string, got {JSON_TYPES.get(type(content), 'something else')}")
        if role == "system" and i:
            raise BadRequest(f"message {i} is a system prompt; only the first message may be one")
        if role != "system" and not content.strip():
            raise BadRequest(f"message {i} ({role}) is empty")
    if messages[-1]["role"] != "user":
        raise BadRequest("the last message must be the user's (the one to answer)")
    system = messages[0]["content"] if messages[0]["role"] == "system" else ""
    return system, [{"role": m["role"], "content": m["content"].strip()} for m in messages if m["role"] != "system"]


def read_options(data, defaults, block_size):
    """The sampling options: the chat's defaults, replaced by those the request gives."""
    options = {key: data.get(key, defaults[key]) for key in OPTIONS}
    seed, max_new_tokens = options["seed"], options["max_new_tokens"]
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63):
        raise BadRequest(f"seed must be a whole number in [0, 2**63) or null, got {seed!r}")
    try:
        check_options(max_new_tokens, **{key: options[key] for key in SAMPLING})
    except UserError as e:
        raise BadRequest(str(e)) from None
    if not 1 <= max_new_tokens < block_size:
        raise BadRequest(f"max_new_tokens must be between 1 and {block_size - 1} "
                         f"(the model's context is {block_size} tokens), got {max_new_tokens}")
    return options


def read_chat_request(data, defaults, block_size):
    """A parsed JSON body -> (system, messages, options), or BadRequest."""
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object with 'messages'")
    unknown = sorted(set(data) - {"messages", *OPTIONS})
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}; known: messages, {', '.join(OPTIONS)}")
    system, messages = read_messages(data.get("messages"))
    return system, messages, read_options(data, defaults, block_size)


# ---------------------------------------------------------------------------------------
# one worker writes the replies

class Reply:
    """One requested reply: its prompt, options, where its events go, and the flag that cancels it."""

    def __init__(self, ids, options, emit):
        self.id = secrets.token_hex(8)
        self.ids, self.options, self.emit = ids, options, emit
        self.cancelled = threading.Event()
        self.started = False


class ReplyWorker:
    """Writes replies one at a time on one thread, in the order they were asked for. The KV
    cache is the chat's: a conversation that goes on is prefilled only from where it changed."""

    def __init__(self, chat):
        self.chat = chat
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reply")
        self.replies = {}  # id -> Reply, waiting or being written
        # a reply is either started or stopped while waiting, never both; reentrant because
        # Ctrl-C's handler stops every reply on the thread that may be inside stop() already
        self.lock = threading.RLock()

    def submit(self, reply):
        self.replies[reply.id] = reply
        self.pool.submit(self._write, reply)

    def stop(self, reply_id):
        """Cancel a reply: a waiting one ends now, one being written after its current token."""
        reply = self.replies.get(reply_id)
        if reply is None:
            return False
        with self.lock:
            reply.cancelled.set()
            if not reply.started:
                self.replies.pop(reply.id, None)
                reply.emit("done", {"reason": "cancelled", "tokens": 0})
        return True

    def stop_all(self):
        for reply_id in list(self.replies):
            self.stop(reply_id)

    def busy(self):
        """How many replies are waiting or being written."""
        return sum(not r.cancelled.is_set() for r in list(self.replies.values()))

    def close(self):
        self.stop_all()
        self.pool.shutdown(wait=True, cancel_futures=True)

    def _write(self, reply):
        with self.lock:
            if reply.cancelled.is_set():  # stopped, or its client left, while it waited
                self.replies.pop(reply.id, None)
                return
            reply.started = True
        try:
            self._generate(reply)
        except Exception as e:  # e.g. out of GPU memory: this reply fails, the server goes on
            message = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            print(f"error: reply {reply.id} failed: {message}", file=sys.stderr)
            reply.emit("error", {"error": message})
        finally:
            self.replies.pop(reply.id, None)

    def _generate(self, reply):
        chat, options = self.chat, reply.options
        state = {"tokens": 0, "ended": "stop"}  # stop: <|endoftext|> or a stop string

        def until_cancelled(tokens):
            try:
                for token in tokens:
                    state["tokens"] += 1
                    yield token
                    if reply.cancelled.is_set():  # checked before the next forward pass
                        state["ended"] = "cancelled"
                        return
                if state["tokens"] == options["max_new_tokens"]:
                    state["ended"] = "length"
            finally:
                tokens.close()

        sampling = {key: options[key] for key in SAMPLING}
        tokens = generate(chat.model, reply.ids, options["max_new_tokens"], stop_tokens=(EOT,),
                          seed=options["seed"], vocab_size=VOCAB_SIZE, cache=chat.cache,
                          autocast=chat.autocast, **sampling)
        for piece in stream_text(until_cancelled(tokens), STOP_STRINGS):
            reply.emit("token", {"text": piece})
        reply.emit("done", {"reason": state["ended"], "tokens": state["tokens"]})


# ---------------------------------------------------------------------------------------
# the app

def model_info(chat, name):
    model = unwrap(chat.model)
    count = model.get_num_params() if hasattr(model, "get_num_params") else sum(p.numel() for p in model.parameters())
    return {"model": name, "parameters": count, "context": model.config.block_size}


def sse(event, data):
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def error_response(status, message, headers=None):
    from fastapi.responses import JSONResponse
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def read_body(request, limit=MAX_BODY_BYTES):
    """The request body, refused with 413 as soon as it passes limit bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BadRequest(f"the body has {int(declared)} bytes; at most {limit} are accepted", 413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BadRequest(f"the body is over {limit} bytes", 413)
    return bytes(body)


async def read_json(request):
    # JSON only: a browser must then ask first (CORS preflight) before another site's page can post here
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise BadRequest("send the body as JSON (Content-Type: application/json)", 415)
    return parse_json(await read_body(request))


def create_app(chat, name):
    """The FastAPI app serving chat (a wigglegpt.chat.Chat: model, cache, defaults) under name."""
    from contextlib import asynccontextmanager

    fastapi = require("fastapi")
    from fastapi.responses import HTMLResponse, StreamingResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException

    get_tokenizer()  # built once now, not by the first request
    worker = ReplyWorker(chat)
    block_size = unwrap(chat.model).config.block_size
    defaults = {"system": chat.system, "max_new_tokens": chat.max_new_tokens, "seed": chat.seed,
                "repetition_window": 0, **chat.sampling}  # 0: the whole context, as in wigglegpt.engine
    info = {**model_info(chat, name), "defaults": defaults,
            "limits": {"max_body_bytes": MAX_BODY_BYTES, "max_messages": MAX_MESSAGES}}
    with open(PAGE, encoding="utf-8") as f:
        page = f.read()

    @asynccontextmanager
    async def lifespan(app):
        yield
        worker.close()

    app = fastapi.FastAPI(title="WiggleGPT chat", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.worker = worker

    @app.exception_handler(BadRequest)
    async def bad_request(request, e):
        return error_response(e.status, str(e))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, e):  # an unknown route (404), a wrong method (405): the API's one-line shape
        return error_response(e.status_code, f"{request.method} {request.url.path}: {e.detail}",
                              getattr(e, "headers", None))

    @app.get("/")
    async def index():
        return HTMLResponse(page, headers=PAGE_HEADERS)

    @app.get("/api/info")
    async def api_info():
        return {"status": "ok", **info, "busy": worker.busy()}

    @app.post("/api/stop")
    async def api_stop(request: fastapi.Request):
        data = await read_json(request)
        reply_id = data.get("id") if isinstance(data, dict) else None
        if not isinstance(reply_id, str):
            raise BadRequest("send {\"id\": ...}, the id from the reply's start event")
        if not worker.stop(reply_id):
            raise BadRequest(f"no reply {reply_id!r} is being written or waiting", 404)
        return {"stopped": reply_id}

    @app.post("/api/chat")
    async def api_chat(request: fastapi.Request):
        system, messages, options = read_chat_request(await read_json(request), defaults, block_size)
        budget = block_size - options["max_new_tokens"]
        try:  # tokenizing a long conversation is real work: off the event loop
            kept, ids = await run_in_threadpool(fit_conversation, system, messages, budget)
        except UserError as e:  # MessageTooLong
            raise BadRequest(str(e)) from None
        loop = asyncio.get_running_loop()
        events = asyncio.Queue()

        def emit(event, data):  # called on the worker thread
            try:
                loop.call_soon_threadsafe(events.put_nowait, (event, data))
            except RuntimeError:  # the event loop is gone: the server stopped
                reply.cancelled.set()

        reply = Reply(ids, options, emit)
        worker.submit(reply)

        async def stream():
            try:
                yield sse("start", {"id": reply.id, "prompt_tokens": len(ids),
                                    "dropped_messages": len(messages) - len(kept)})
                while True:
                    try:
                        event, data = await asyncio.wait_for(events.get(), KEEPALIVE_S)
                    except asyncio.TimeoutError:
                        yield ": waiting\n\n"
                        continue
                    yield sse(event, data)
                    if event in ("done", "error"):
                        return
            finally:  # the client left (the task is cancelled) or the reply is over: free the worker
                reply.cancelled.set()

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


# ---------------------------------------------------------------------------------------
# running the server

def check_web_settings(cfg):
    """Refuse bad --web settings before the model is loaded."""
    if cfg.prompt:
        raise UserError("--prompt answers one message in the terminal; leave it out with --web")
    if not 0 <= cfg.port <= 65535:
        raise UserError(f"port must be between 0 and 65535 (0: any free port), got {cfg.port}")
    if not cfg.host.strip():
        raise UserError("host is empty; use 127.0.0.1 (this machine only) or an address to listen on")
    require("fastapi")
    require("uvicorn")


def bind(host, port):
    """A listening socket, or a UserError saying why not (port taken, unknown host)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except socket.gaierror as e:
        raise UserError(f"cannot listen on host {host!r}: {e.strerror}") from None
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror}; choose another with --port=...") from None
    return sock


def url_for(sock):
    host, port = sock.getsockname()[:2]
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def serve(chat, name, host="127.0.0.1", port=8000):
    """Serve the chat until Ctrl-C (or SIGTERM)."""
    uvicorn = require("uvicorn")
    app = create_app(chat, name)
    sock = bind(host, port)
    if host not in LOCAL_HOSTS:
        print(f"warning: listening on {host}: anyone who can reach this machine on port "
              f"{sock.getsockname()[1]} can use the chat (there is no login)", file=sys.stderr)
    print(f"chat in the browser: {url_for(sock)}  (Ctrl-C stops the server)", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                           timeout_graceful_shutdown=2))
    exit_on_signal = server.handle_exit

    def handle_exit(sig, frame):  # end the replies being streamed, so their connections close now
        app.state.worker.stop_all()
        exit_on_signal(sig, frame)

    server.handle_exit = handle_exit
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn raises the Ctrl-C again once it has shut down
        pass
    finally:
        app.state.worker.close()
        sock.close()
    print("server stopped", file=sys.stderr)

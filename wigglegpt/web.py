"""
Chat in the browser: `python chat_bio.py --ckpt=ckpt_finetune.pt --web`.

A small FastAPI app: the page (chat_web.html), its HTTP API (/api/info, /api/chat as
server-sent events, /api/stop) and an OpenAI-compatible API (/v1/*, wigglegpt/openai_api.py),
around the terminal's wigglegpt.chat.Chat, so the prompt, its trimming and the stop strings are
the terminal's. Replies are written one at a time on one worker thread (wigglegpt/serving.py),
in the order asked, while the event loop stays free. The APIs: README.md, "Chat in the browser".
"""

import json
import os
import socket
import sys

from wigglegpt import openai_api
from wigglegpt.chat import fit_conversation
from wigglegpt.checkpoint import unwrap
from wigglegpt.common import UserError
from wigglegpt.engine import SAMPLING, check_options
from wigglegpt.serving import (MAX_BODY_BYTES, BadRequest, ReplyWorker, json_type, key_checker, read_json,
                               start_reply)
from wigglegpt.tokenizer import get_tokenizer

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "chat_web.html")
INSTALL = "pip install -r requirements-optional.txt"
MAX_MESSAGES = 1000
OPTIONS = SAMPLING + ("max_new_tokens", "seed")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
API_KEY_ENV = "WIGGLEGPT_API_KEY"
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


# ---------------------------------------------------------------------------------------
# reading a chat request

def read_messages(messages):
    """Check the conversation; return (system prompt, the other messages). User and assistant
    texts are stripped, as the terminal chat strips what is typed and keeps replies stripped,
    so a page's conversation gives the prompt the terminal's would, id for id."""
    if messages is None:
        raise BadRequest("missing 'messages': a list of {\"role\": ..., \"content\": ...}")
    if not isinstance(messages, list):
        raise BadRequest(f"'messages' must be an array, got {json_type(messages)}")
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
            raise BadRequest(f"message {i} content must be a string, got {json_type(content)}")
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
# the app

def model_info(chat, name):
    model = unwrap(chat.model)
    count = model.get_num_params() if hasattr(model, "get_num_params") else sum(p.numel() for p in model.parameters())
    return {"model": name, "parameters": count, "context": model.config.block_size}


def sse(event, data):
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def error_response(request, e):
    """A refusal as JSON: the page API's {"error": "<one line>"}, OpenAI's shape under /v1/."""
    from fastapi.responses import JSONResponse
    path = request.url.path
    body = openai_api.error_body(e) if path.startswith("/v1/") or path == "/v1" else {"error": str(e)}
    return JSONResponse(body, status_code=e.status, headers=e.headers)


def create_app(chat, name, api_key=""):
    """The FastAPI app serving chat (a wigglegpt.chat.Chat: model, cache, defaults) under name;
    with api_key, every API route (/api/*, /v1/*) wants Authorization: Bearer api_key."""
    from contextlib import asynccontextmanager

    fastapi = require("fastapi")
    from fastapi.responses import HTMLResponse, StreamingResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException

    get_tokenizer()  # built once now, not by the first request
    worker = ReplyWorker(chat)
    block_size = unwrap(chat.model).config.block_size
    defaults = {"system": chat.system, "max_new_tokens": chat.max_new_tokens, "seed": chat.seed,
                "repetition_window": 0, "penalty_style": "ctrl", **chat.sampling}  # generate's own defaults
    info = {**model_info(chat, name), "defaults": defaults, "api_key": bool(api_key),
            "limits": {"max_body_bytes": MAX_BODY_BYTES, "max_messages": MAX_MESSAGES}}
    with open(PAGE, encoding="utf-8") as f:
        page = f.read()

    @asynccontextmanager
    async def lifespan(app):
        yield
        worker.close()

    app = fastapi.FastAPI(title="WiggleGPT chat", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.worker = worker
    keyed = [fastapi.Depends(key_checker(api_key))]

    @app.exception_handler(BadRequest)
    async def bad_request(request, e):
        return error_response(request, e)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, e):  # an unknown route (404), a wrong method (405): the APIs' own shapes
        return error_response(request, BadRequest(f"{request.method} {request.url.path}: {e.detail}", e.status_code,
                                                  headers=getattr(e, "headers", None)))

    @app.get("/")
    async def index():
        return HTMLResponse(page, headers=PAGE_HEADERS)

    @app.get("/api/info", dependencies=keyed)
    async def api_info():
        return {"status": "ok", **info, "busy": worker.busy()}

    @app.post("/api/stop", dependencies=keyed)
    async def api_stop(request: fastapi.Request):
        data = await read_json(request)
        reply_id = data.get("id") if isinstance(data, dict) else None
        if not isinstance(reply_id, str):
            raise BadRequest("send {\"id\": ...}, the id from the reply's start event")
        if not worker.stop(reply_id):
            raise BadRequest(f"no reply {reply_id!r} is being written or waiting", 404)
        return {"stopped": reply_id}

    @app.post("/api/chat", dependencies=keyed)
    async def api_chat(request: fastapi.Request):
        system, messages, options = read_chat_request(await read_json(request), defaults, block_size)
        budget = block_size - options["max_new_tokens"]
        try:  # tokenizing a long conversation is real work: off the event loop
            kept, ids = await run_in_threadpool(fit_conversation, system, messages, budget)
        except UserError as e:  # MessageTooLong
            raise BadRequest(str(e)) from None
        reply, events = start_reply(worker, ids, options)

        async def stream():
            try:
                yield sse("start", {"id": reply.id, "prompt_tokens": len(ids),
                                    "dropped_messages": len(messages) - len(kept)})
                async for item in events:
                    yield ": waiting\n\n" if item is None else sse(*item)
            finally:  # the client left (the task is cancelled) or the reply is over: free the worker
                reply.cancelled.set()

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    openai_api.add_routes(app, worker, name, defaults, block_size, keyed)
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
    api_key(cfg)
    require("fastapi")
    require("uvicorn")


def api_key(cfg):
    """The key the APIs require: --api_key, else the WIGGLEGPT_API_KEY environment variable
    (the safer place: a command line shows in the process list), else '' (none)."""
    key = cfg.api_key or os.environ.get(API_KEY_ENV, "")
    where = "--api_key" if cfg.api_key else API_KEY_ENV
    if key and (not key.isascii() or not key.isprintable() or " " in key):
        raise UserError(f"{where} must be printable ASCII without spaces (it is sent in an HTTP header)")
    return key


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


def serve(chat, name, host="127.0.0.1", port=8000, key=""):
    """Serve the chat until Ctrl-C (or SIGTERM); with key, the APIs want it as a Bearer token."""
    uvicorn = require("uvicorn")
    app = create_app(chat, name, key)
    sock = bind(host, port)
    if host not in LOCAL_HOSTS and not key:
        print(f"warning: listening on {host} without an API key: anyone who can reach this machine on port "
              f"{sock.getsockname()[1]} can use the chat and its API (set --api_key or {API_KEY_ENV})",
              file=sys.stderr)
    url = url_for(sock)
    print(f"chat in the browser: {url}  OpenAI-compatible API: {url}v1  (Ctrl-C stops the server)", flush=True)
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

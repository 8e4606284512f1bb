"""
What the web chat's two HTTP APIs share (wigglegpt/web.py's /api/* for the page, and
wigglegpt/openai_api.py's /v1/*): the one worker thread that writes replies in the order they
were asked for, reading a JSON body within limits, the API key check, and BadRequest, the
refusal both turn into a 4xx in their own error shape.
"""

import asyncio
import json
import secrets
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from wigglegpt.chat import STOP_STRINGS
from wigglegpt.engine import SAMPLING, generate, stream_text
from wigglegpt.tokenizer import EOT, VOCAB_SIZE

MAX_BODY_BYTES = 1 << 20  # far above any conversation a context of a few thousand tokens can use
KEEPALIVE_S = 5.0  # how long a waiting reply is silent before a comment line keeps proxies from timing out
JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
              bool: "a boolean", type(None): "null"}


class BadRequest(Exception):
    """A request we refuse: the status and one line saying why; for the OpenAI API also the
    field at fault (param) and a machine-readable code."""

    def __init__(self, message, status=400, param=None, code=None, headers=None):
        super().__init__(message)
        self.status, self.param, self.code, self.headers = status, param, code, headers


def json_type(value):
    return JSON_TYPES.get(type(value), "something else")


# ---------------------------------------------------------------------------------------
# reading a request

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


def key_checker(api_key):
    """A FastAPI dependency refusing, with 401, a request without Authorization: Bearer api_key
    (every request passes when api_key is empty)."""
    from starlette.requests import Request  # FastAPI hands a dependency the request by this annotation
    expected = (api_key or "").encode()

    def check_key(request: Request):
        if not expected:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), expected):
            raise BadRequest("missing or wrong API key: send the header 'Authorization: Bearer <key>' with the "
                             "key the server was started with", 401, code="invalid_api_key",
                             headers={"WWW-Authenticate": "Bearer"})
    return check_key


# ---------------------------------------------------------------------------------------
# one worker writes the replies

class Reply:
    """One requested reply: its prompt, options, stop strings, where its events go, and the flag
    that cancels it. decoder: a StreamDecoder that may hold the prompt's unfinished bytes."""

    def __init__(self, ids, options, emit, stops=STOP_STRINGS, decoder=None):
        self.id = secrets.token_hex(8)
        self.ids, self.options, self.emit, self.stops, self.decoder = ids, options, emit, stops, decoder
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
        for piece in stream_text(until_cancelled(tokens), reply.stops, reply.decoder):
            reply.emit("token", {"text": piece})
        reply.emit("done", {"reason": state["ended"], "tokens": state["tokens"]})


def start_reply(worker, ids, options, stops=STOP_STRINGS, decoder=None):
    """Queue a reply on the worker, from the event loop. Returns the Reply and an async iterator
    of its events, (name, data) as they come and None after each KEEPALIVE_S of silence, ending
    after 'done' or 'error'. Leaving the iterator early (the client went) cancels the reply."""
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()

    def emit(event, data):  # called on the worker thread
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (event, data))
        except RuntimeError:  # the event loop is gone: the server stopped
            reply.cancelled.set()

    reply = Reply(ids, options, emit, stops, decoder)
    worker.submit(reply)

    async def events():
        try:
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except asyncio.TimeoutError:
                    yield None
                    continue
                yield item
                if item[0] in ("done", "error"):
                    return
        finally:
            reply.cancelled.set()

    return reply, events()

"""
The web chat's OpenAI-compatible API, so the `openai` client, Open WebUI, editor plug-ins and
curl scripts can talk to a WiggleGPT model:

    GET  /v1/models                 the one model this server holds
    POST /v1/chat/completions       the chat template, trimmed to fit, as the page and the terminal
    POST /v1/completions            plain text continued, as sample_bio.py does

Streamed (`"stream": true`: `data: {...}` chunks, then `data: [DONE]`) or as one JSON answer.
Replies are written by the page's worker, in the same queue (wigglegpt/serving.py); refusals
have OpenAI's error shape. The fields and what is refused: README.md, "OpenAI-compatible API".
"""

import json
import time
from contextlib import aclosing

from wigglegpt.chat import STOP_STRINGS, MessageTooLong, fit_conversation
from wigglegpt.common import UserError
from wigglegpt.engine import check_options
from wigglegpt.serving import BadRequest, json_type, read_json, start_reply
from wigglegpt.tokenizer import EOT, VOCAB_SIZE, StreamDecoder, encode

MAX_STOPS = 4  # as OpenAI's API
DISCONNECT_CHECK_S = 1.0  # how often a reply sent whole looks whether its client is still there
# beyond OpenAI's fields, the sampling options the page has too (sent with the client's extra_body)
EXTRA = ("top_k", "repetition_penalty", "repetition_window", "penalty_style")
# OpenAI fields accepted only at a value that asks for nothing this server cannot do
NEUTRAL = {"presence_penalty": (0,), "frequency_penalty": (0,), "logit_bias": ({},), "logprobs": (False, 0),
           "top_logprobs": (0,), "tools": ([],), "tool_choice": ("none", "auto"), "functions": ([],),
           "function_call": ("none", "auto"), "response_format": ({"type": "text"},), "modalities": (["text"],),
           "suffix": ("",), "best_of": (1,)}
IGNORED = ("user", "metadata", "store", "service_tier", "parallel_tool_calls")  # no effect on the reply
COMMON = ("model", "max_tokens", "temperature", "top_p", "seed", "stop", "n", "stream", "stream_options", *EXTRA)
CHAT_FIELDS = ("messages", "max_completion_tokens", *COMMON, "presence_penalty", "frequency_penalty", "logit_bias",
               "logprobs", "top_logprobs", "tools", "tool_choice", "functions", "function_call", "response_format",
               "modalities", *IGNORED)
COMPLETION_FIELDS = ("prompt", "echo", *COMMON, "presence_penalty", "frequency_penalty", "logit_bias", "logprobs",
                     "suffix", "best_of", "user")
SYSTEM_ROLES = ("system", "developer")  # OpenAI's newer name for the system prompt


def error_body(e):
    """OpenAI's error object for a BadRequest."""
    kind = ("invalid_request_error" if e.status < 500 else "server_error") if e.status != 401 else "authentication_error"
    return {"error": {"message": str(e), "type": kind, "param": e.param, "code": e.code}}


def refuse(message, param=None, code=None, status=400):
    raise BadRequest(message, status, param=param, code=code)


def is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ---------------------------------------------------------------------------------------
# reading a request

def check_fields(data, known):
    if not isinstance(data, dict):
        refuse(f"the body must be a JSON object, got {json_type(data)}")
    for key in data:
        if key not in known:
            refuse(f"Unrecognized request argument supplied: {key}", param=key)
    for key, allowed in NEUTRAL.items():
        value = data.get(key)
        if value is not None and value not in allowed:
            refuse(f"{key}={value!r} is not supported by this server (it takes {allowed[0]!r} or null)", param=key)
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        refuse(f"model must be a string, got {json_type(model)}", param="model")


def read_stops(value):
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        refuse(f"stop must be a string or an array of strings, got {json_type(value)}", param="stop")
    if len(stops) > MAX_STOPS:
        refuse(f"stop has {len(stops)} strings; at most {MAX_STOPS} are accepted", param="stop")
    return tuple(s for s in stops if s)


def read_options(data, defaults, block_size, max_tokens, room=None):
    """The sampling options: the chat's defaults, replaced by what the request gives. room: the
    tokens left after a fixed prompt (completions), which max_tokens must fit in."""
    if data.get("n") not in (None, 1):
        refuse(f"n={data['n']!r}: this server writes one choice per request (n=1)", param="n")
    for key in ("stream", "echo"):
        if data.get(key) not in (None, True, False):
            refuse(f"{key} must be true or false, got {json_type(data[key])}", param=key)
    options = {key: data[key] if data.get(key) is not None else defaults[key]
               for key in ("temperature", "top_p", *EXTRA)}
    temperature, seed = options["temperature"], data.get("seed", defaults["seed"])
    if not is_number(temperature) or not 0 <= temperature <= 2:
        refuse(f"temperature must be a number between 0 and 2, got {temperature!r}", param="temperature")
    if seed is not None and (not is_int(seed) or not -2**63 <= seed < 2**63):
        refuse(f"seed must be a whole number (64-bit) or null, got {seed!r}", param="seed")
    if max_tokens is None:
        max_tokens = defaults["max_new_tokens"] if room is None else min(defaults["max_new_tokens"], room)
    elif not is_int(max_tokens) or max_tokens < 1:
        refuse(f"max_tokens must be a whole number >= 1, got {max_tokens!r}", param="max_tokens")
    if max_tokens >= block_size:
        refuse(f"max_tokens={max_tokens} leaves no room for the prompt in the model's context of {block_size} "
               f"tokens; ask for at most {block_size - 1}", param="max_tokens")
    try:
        check_options(max_tokens, **options)
    except UserError as e:
        refuse(str(e), param=str(e).split()[0])
    return {**options, "max_new_tokens": max_tokens, "seed": seed}


def stream_options(data):
    """Whether a streamed answer ends with a usage chunk (stream_options.include_usage)."""
    value = data.get("stream_options")
    if value is None:
        return False
    if not data.get("stream"):
        refuse("stream_options is only allowed when stream is true", param="stream_options")
    if not isinstance(value, dict) or value.get("include_usage") not in (None, True, False):
        refuse("stream_options must be an object like {\"include_usage\": true}", param="stream_options")
    return bool(value.get("include_usage"))


def message_text(i, content):
    """A message's content as text: a string, or an array of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        texts = [p.get("text") for p in content if p.get("type") == "text"]
        if len(texts) == len(content) and all(isinstance(t, str) for t in texts):
            return "".join(texts)
        refuse(f"messages[{i}].content: this model reads text only (parts of type 'text')",
               param=f"messages[{i}].content")
    refuse(f"messages[{i}].content must be a string or an array of text parts, got {json_type(content)}",
           param=f"messages[{i}].content")


def read_messages(messages):
    """(system prompt, the user and assistant messages), as the page's chat request reads them:
    leading system (or developer) messages make the system prompt, the last message is the user's."""
    if not isinstance(messages, list) or not messages:
        refuse("messages must be a non-empty array of {\"role\": ..., \"content\": ...}", param="messages")
    system, turns = [], []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            refuse(f"messages[{i}] must be an object with 'role' and 'content'", param=f"messages[{i}]")
        role, text = message["role"], message_text(i, message["content"])
        if role in SYSTEM_ROLES:
            if turns:
                refuse(f"messages[{i}] is a {role} message after the conversation started; this model's chat "
                       "template has one system prompt, first", param=f"messages[{i}].role")
            system.append(text)
        elif role in ("user", "assistant"):
            if not text.strip():
                refuse(f"messages[{i}] ({role}) is empty", param=f"messages[{i}].content")
            turns.append({"role": role, "content": text.strip()})  # stripped, as the terminal chat keeps turns
        else:
            refuse(f"messages[{i}] has role {role!r}; this model takes system, developer, user and assistant "
                   "(no tools)", param=f"messages[{i}].role")
    if not turns or turns[-1]["role"] != "user":
        refuse("the last message must be the user's (the one to answer)", param="messages")
    return "\n".join(system), turns


def read_prompt(prompt):
    """The prompt's token ids: a string (empty: <|endoftext|>, as sample_bio.py starts), token ids,
    or an array holding one of those."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if prompt is None or isinstance(prompt, str):
        return encode(prompt) if prompt else [EOT]
    if isinstance(prompt, list) and prompt and all(is_int(i) for i in prompt):
        if not all(0 <= i < VOCAB_SIZE for i in prompt):
            refuse(f"prompt token ids must be between 0 and {VOCAB_SIZE - 1}", param="prompt")
        return list(prompt)
    if isinstance(prompt, list) and len(prompt) > 1:
        refuse(f"prompt holds {len(prompt)} prompts; this server answers one per request", param="prompt")
    refuse("prompt must be a string, an array of token ids, or an array with one of those", param="prompt")


def too_long(message, param):
    refuse(message, param=param, code="context_length_exceeded")


# ---------------------------------------------------------------------------------------
# the answers

def usage(prompt_tokens, completion_tokens):
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_choice(text=None, reason=None, delta=None):
    if delta is not None:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
    return {"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
            "logprobs": None, "finish_reason": reason}


def text_choice(text, reason=None):
    return {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}


def data_line(obj):
    return f"data: {json.dumps(obj)}\n\n"


def add_routes(app, worker, name, defaults, block_size, dependencies):
    """Mount /v1/* on app (FastAPI), writing replies on worker (a serving.ReplyWorker)."""
    import fastapi
    from fastapi.responses import StreamingResponse
    from starlette.concurrency import run_in_threadpool

    created = int(time.time())
    card = {"id": name, "object": "model", "created": created, "owned_by": "wigglegpt"}

    @app.get("/v1/models", dependencies=dependencies)
    async def models():
        return {"object": "list", "data": [card]}

    @app.get("/v1/models/{model_id:path}", dependencies=dependencies)
    async def model(model_id: str):
        if model_id != name:
            refuse(f"The model '{model_id}' does not exist; this server has '{name}'", param="model",
                   code="model_not_found", status=404)
        return card

    async def answer(request, ids, options, stops, decoder, stream, include_usage, kind, shape, prefix=""):
        """Write the reply and send it, as chunks or as one object. shape(text, reason) -> choice."""
        reply, events = start_reply(worker, ids, options, stops, decoder)
        head = {"id": f"{kind[0]}-{reply.id}", "object": kind[1], "created": int(time.time()), "model": name}

        if not stream:
            pieces, result, checked = [prefix], None, time.monotonic()
            async with aclosing(events):
                async for item in events:
                    if item is None or time.monotonic() - checked > DISCONNECT_CHECK_S:
                        checked = time.monotonic()
                        if await request.is_disconnected():  # the client gave up: free the worker
                            return None
                    if item is None:
                        continue
                    event, data = item
                    if event == "token":
                        pieces.append(data["text"])
                    else:
                        result = (event, data)
            event, data = result
            if event == "error":
                refuse(f"the reply failed: {data['error']}", status=500)
            return {**head, "choices": [shape("".join(pieces), data["reason"])],
                    "usage": usage(len(ids), data["tokens"]), "system_fingerprint": None}

        async def chunks():
            def chunk(choices, **more):
                return data_line({**head, "system_fingerprint": None, "choices": choices, **more,
                                  **({"usage": None} if include_usage and "usage" not in more else {})})
            try:
                yield chunk([shape(prefix, None, first=True)])
                async for item in events:
                    if item is None:
                        yield ": waiting\n\n"
                        continue
                    event, data = item
                    if event == "token":
                        yield chunk([shape(data["text"], None)])
                    elif event == "error":
                        yield data_line(error_body(BadRequest(f"the reply failed: {data['error']}", 500)))
                        return
                    else:
                        yield chunk([shape("", data["reason"], last=True)])
                        if include_usage:
                            yield chunk([], usage=usage(len(ids), data["tokens"]))
                yield "data: [DONE]\n\n"
            finally:  # the client left (the task is cancelled) or the reply is over: free the worker
                reply.cancelled.set()

        return StreamingResponse(chunks(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/chat/completions", dependencies=dependencies)
    async def chat_completions(request: fastapi.Request):
        data = await read_json(request)
        check_fields(data, CHAT_FIELDS)
        system, messages = read_messages(data.get("messages"))
        max_tokens = data.get("max_completion_tokens")
        options = read_options(data, defaults, block_size, data.get("max_tokens") if max_tokens is None else max_tokens)
        include_usage = stream_options(data)
        try:  # the page's trimming: the oldest turns go first, the system prompt stays
            kept, ids = await run_in_threadpool(fit_conversation, system, messages,
                                                block_size - options["max_new_tokens"])
        except MessageTooLong as e:  # the newest message alone is too long
            too_long(f"the last message alone makes a prompt of {e.prompt_tokens} tokens and max_tokens asks for "
                     f"{options['max_new_tokens']} more; the model's context is {block_size} tokens", "messages")

        def shape(text, reason, first=False, last=False):
            if not data.get("stream"):
                return chat_choice(text, reason)
            delta = {"role": "assistant", "content": text} if first else {} if last else {"content": text}
            return chat_choice(reason=reason, delta=delta)

        return await answer(request, ids, options, STOP_STRINGS + read_stops(data.get("stop")), None,
                            bool(data.get("stream")), include_usage, ("chatcmpl", "chat.completion.chunk"
                                                                      if data.get("stream") else "chat.completion"),
                            shape)

    @app.post("/v1/completions", dependencies=dependencies)
    async def completions(request: fastapi.Request):
        data = await read_json(request)
        check_fields(data, COMPLETION_FIELDS)
        ids = await run_in_threadpool(read_prompt, data.get("prompt"))
        room = block_size - len(ids)
        options = read_options(data, defaults, block_size, data.get("max_tokens"), max(room, 1))
        if options["max_new_tokens"] > room:
            too_long(f"the prompt has {len(ids)} tokens and max_tokens asks for {options['max_new_tokens']} more; "
                     f"the model's context is {block_size} tokens", "prompt")
        include_usage = stream_options(data)
        decoder = StreamDecoder()  # the prompt's ids first: a character split across it and the reply stays whole
        echoed = "".join(decoder.push(i) for i in ids)
        prefix = echoed if data.get("echo") and data.get("prompt") not in (None, "", [""]) else ""

        def shape(text, reason, first=False, last=False):
            return text_choice(text, reason)

        return await answer(request, ids, options, read_stops(data.get("stop")), decoder, bool(data.get("stream")),
                            include_usage, ("cmpl", "text_completion"), shape, prefix)

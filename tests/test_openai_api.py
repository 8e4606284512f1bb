"""The web chat's OpenAI-compatible API (wigglegpt/openai_api.py), through the official `openai`
Python client against a live server: models, chat completions and completions, streamed and
not, the same replies as the terminal chat, the page's API and sample_bio's generation, stop
strings, usage and finish_reason, refusals as the client's own exceptions, the API key, and a
client that leaves freeing the worker. The bad requests' shapes are in test_bad_inputs.py."""

import os
import re
import signal
import subprocess

import pytest

from conftest import require_module
from test_web import MAX_NEW, SERVED, chat_command, live_server, make_chat, parse_events, wait_until
from test_web import checkpoint, paced, server  # noqa: F401  (fixtures: a tiny checkpoint, the live server)
from wigglegpt import web
from wigglegpt.engine import generate
from wigglegpt.tokenizer import EOT, VOCAB_SIZE, decode, encode, render_prompt

INSTALL = "pip install -r requirements-optional.txt"
NAME = SERVED
KEY = "s3cret-key"
HELLO = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello, who are you?"}]


def openai_client(url, key="unused"):
    openai = require_module("openai", INSTALL)
    httpx = require_module("httpx", INSTALL)
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60,
                         http_client=httpx.Client(trust_env=False))


@pytest.fixture(scope="module")
def client(server):
    return openai_client(server[0])


def terminal_reply(model, messages, **overrides):
    """What chat_bio.py answers to the conversation's last message, with the server's settings."""
    chat = make_chat(model, **overrides)
    chat.system = messages[0]["content"] if messages[0]["role"] == "system" else ""
    chat.history = [m for m in messages[:-1] if m["role"] != "system"]
    return chat.respond(messages[-1]["content"], lambda piece: None)


def test_models_lists_the_one_model(client):
    openai = require_module("openai", INSTALL)
    models = client.models.list().data
    assert [m.id for m in models] == [NAME] and models[0].object == "model" and models[0].owned_by == "wigglegpt"
    assert client.models.retrieve(NAME).id == NAME
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("gpt-4")
    assert e.value.code == "model_not_found"


def test_chat_completion_is_the_terminal_chats_reply(client, paced):
    answer = client.chat.completions.create(model=NAME, messages=HELLO, temperature=0)
    expected = terminal_reply(paced.inner, HELLO)
    choice = answer.choices[0]
    assert expected and choice.message.content == expected and choice.message.role == "assistant"
    assert answer.object == "chat.completion" and answer.model == NAME and answer.id.startswith("chatcmpl-")
    prompt = render_prompt(HELLO)
    assert answer.usage.prompt_tokens == len(prompt)
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    # the chat's defaults fill in what the request leaves out: MAX_NEW tokens, unless it stopped first
    assert (choice.finish_reason == "length") == (answer.usage.completion_tokens == MAX_NEW)
    short = client.chat.completions.create(model=NAME, messages=HELLO, temperature=0, max_tokens=3)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3
    assert expected.startswith(short.choices[0].message.content)


def test_streamed_chat_gives_the_same_reply_in_chunks_then_usage(client):
    whole = client.chat.completions.create(model=NAME, messages=HELLO, temperature=0, max_tokens=8)
    chunks = list(client.chat.completions.create(model=NAME, messages=HELLO, temperature=0, max_tokens=8,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant" and len({c.id for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content and len(chunks) > 3
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert reasons[-1] == whole.choices[0].finish_reason and not any(reasons[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()
    plain = list(client.chat.completions.create(model=NAME, messages=HELLO, max_tokens=2, stream=True))
    assert all(c.usage is None for c in plain) and plain[-1].choices[0].finish_reason == "length"


def test_stop_strings_end_the_reply_before_them(client):
    whole = client.chat.completions.create(model=NAME, messages=HELLO, temperature=0, max_tokens=10)
    text = whole.choices[0].message.content
    words = [w for w in re.findall(r"\w{3,}", text) if text.index(w) > 0]
    assert words, text
    stop = words[0]
    for stream in (False, True):
        answer = client.chat.completions.create(model=NAME, messages=HELLO, temperature=0, max_tokens=10,
                                                stop=[stop, "never appears"], stream=stream)
        if stream:
            chunks = list(answer)
            got, reason = "".join(c.choices[0].delta.content or "" for c in chunks), chunks[-1].choices[0].finish_reason
        else:
            got, reason = answer.choices[0].message.content, answer.choices[0].finish_reason
        assert got == text[:text.index(stop)] and reason == "stop", (stream, got, text)


def test_seeded_sampling_repeats_and_matches_the_page_api(client, server, paced):
    httpx = require_module("httpx", INSTALL)
    asked = dict(temperature=1.0, top_p=1.0, seed=1234, max_tokens=8)
    one, two = (client.chat.completions.create(model=NAME, messages=HELLO, **asked).choices[0].message.content
                for _ in range(2))
    other = client.chat.completions.create(model=NAME, messages=HELLO, **{**asked, "seed": 99}).choices[0].message
    assert one == two and other.content != one
    # the page's /api/chat on the same worker, with the same options, writes the same reply
    with httpx.Client(base_url=server[0], timeout=60, trust_env=False) as http:
        events = parse_events(http.post("/api/chat", json={"messages": HELLO, "temperature": 1.0, "top_p": 1.0,
                                                           "seed": 1234, "max_new_tokens": 8}).text)
    assert "".join(d["text"] for name, d in events if name == "token") == one
    # the page's extra sampling options come through the client's extra_body
    greedy = client.chat.completions.create(model=NAME, messages=HELLO, temperature=0, max_tokens=6,
                                            extra_body={"repetition_penalty": 1.0, "top_k": 1})
    assert greedy.choices[0].message.content == terminal_reply(paced.inner, HELLO,
                                                               repetition_penalty=1.0, max_new_tokens=6)


def test_text_parts_developer_prompts_and_long_conversations_are_read_as_the_page_reads_them(client, paced):
    parts = [{"role": "developer", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]},
             {"role": "user", "content": [{"type": "text", "text": "Hello, who are you?"}]}]
    same = [client.chat.completions.create(model=NAME, messages=m, temperature=0, max_tokens=5).choices[0].message
            for m in (parts, HELLO)]
    assert same[0].content == same[1].content
    # a conversation longer than the context loses its oldest turns, as in the terminal chat
    long = []
    for i in range(30):
        long += [{"role": "user", "content": f"question number {i}"}, {"role": "assistant", "content": f"answer {i}"}]
    long.append({"role": "user", "content": "and the last one?"})
    answer = client.chat.completions.create(model=NAME, messages=long, temperature=0, max_tokens=5)
    assert answer.usage.prompt_tokens <= paced.config.block_size - 5
    assert answer.choices[0].message.content == terminal_reply(paced.inner, long, max_new_tokens=5)


def test_completions_continue_the_text_as_sample_bio_does(client, paced):
    prompt = "To be, or not to be"
    answer = client.completions.create(model=NAME, prompt=prompt, temperature=0, max_tokens=7,
                                       extra_body={"repetition_penalty": 1.0})
    ids = list(generate(paced.inner, encode(prompt), 7, temperature=0.0, stop_tokens=(EOT,), vocab_size=VOCAB_SIZE))
    choice = answer.choices[0]
    assert choice.text == decode(ids) and answer.object == "text_completion" and answer.id.startswith("cmpl-")
    assert answer.usage.prompt_tokens == len(encode(prompt)) and answer.usage.completion_tokens == len(ids)
    assert choice.finish_reason == ("length" if len(ids) == 7 else "stop")
    echoed = client.completions.create(model=NAME, prompt=prompt, temperature=0, max_tokens=7, echo=True,
                                       extra_body={"repetition_penalty": 1.0})
    assert echoed.choices[0].text == prompt + choice.text
    streamed = client.completions.create(model=NAME, prompt=prompt, temperature=0, max_tokens=7, stream=True,
                                         extra_body={"repetition_penalty": 1.0})
    assert "".join(c.choices[0].text for c in streamed) == choice.text
    # token ids, and the empty prompt, which starts from <|endoftext|> as sample_bio.py does
    by_ids = client.completions.create(model=NAME, prompt=encode(prompt), temperature=0, max_tokens=7,
                                       extra_body={"repetition_penalty": 1.0})
    assert by_ids.choices[0].text == choice.text
    empty = client.completions.create(model=NAME, prompt="", temperature=0, max_tokens=3)
    assert empty.usage.prompt_tokens == 1
    # the default reply length is the chat's, cut to what the context has left
    near_full = encode("word " * (paced.config.block_size - 4))[:paced.config.block_size - 4]
    rest = client.completions.create(model=NAME, prompt=near_full, temperature=0)
    assert rest.usage.completion_tokens <= 4


def test_bad_requests_raise_the_clients_bad_request_error(client):
    openai = require_module("openai", INSTALL)
    for kw, param in ((dict(n=2), "n"), (dict(temperature=2.5), "temperature"), (dict(max_tokens=10**6), "max_tokens"),
                      (dict(extra_body={"frobnicate": True}), "frobnicate"), (dict(stop=["a"] * 5), "stop"),
                      (dict(presence_penalty=0.5), "presence_penalty")):
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=NAME, messages=HELLO, **kw)
        assert e.value.status_code == 400 and e.value.param == param, (kw, e.value.body)
        assert e.value.body["type"] == "invalid_request_error" and "\n" not in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "word " * 400}], max_tokens=4)
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=NAME, prompt=["one", "two"])
    assert e.value.param == "prompt"
    # the server goes on answering
    assert client.chat.completions.create(model=NAME, messages=HELLO, max_tokens=1).usage.completion_tokens == 1


def test_api_key_guards_every_api_route_but_the_page(paced):
    openai = require_module("openai", INSTALL)
    httpx = require_module("httpx", INSTALL)
    app = web.create_app(make_chat(paced), NAME, api_key=KEY)
    with live_server(app) as url:
        with pytest.raises(openai.AuthenticationError) as e:
            openai_client(url, "wrong").chat.completions.create(model=NAME, messages=HELLO)
        assert e.value.code == "invalid_api_key" and e.value.body["type"] == "authentication_error"
        good = openai_client(url, KEY)
        assert good.chat.completions.create(model=NAME, messages=HELLO, max_tokens=2).usage.completion_tokens == 2
        with httpx.Client(base_url=url, timeout=30, trust_env=False) as http:
            assert http.get("/").status_code == 200  # the page itself asks for the key when the API wants it
            for method, route in (("GET", "/api/info"), ("POST", "/api/chat"), ("POST", "/api/stop"),
                                  ("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/v1/completions")):
                for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
                    response = http.request(method, route, json={}, headers=headers)
                    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer", route
                    error = response.json()["error"]
                    message = error["message"] if route.startswith("/v1") else error
                    assert "API key" in message and KEY not in message
            info = http.get("/api/info", headers={"Authorization": f"Bearer {KEY}"}).json()
            assert info["api_key"] is True and info["model"] == NAME


def test_a_client_that_leaves_frees_the_worker(server, client, paced):
    httpx = require_module("httpx", INSTALL)
    worker = server[1].state.worker
    paced.delay = 0.12  # 60 tokens take 7 s: long enough to leave in the middle
    try:
        stream = client.chat.completions.create(model=NAME, messages=HELLO, max_tokens=60, stream=True)
        for i, _ in enumerate(stream):
            if i == 2:
                break
        stream.close()
        assert wait_until(lambda: worker.busy() == 0, 3), "a streamed reply went on after its client left"
        with httpx.Client(base_url=server[0], timeout=0.5, trust_env=False) as http:  # not streamed: it times out
            with pytest.raises(httpx.ReadTimeout):
                http.post("/v1/completions", json={"prompt": "Once", "max_tokens": 60})
        assert wait_until(lambda: worker.busy() == 0, 4), "a whole reply went on after its client left"
    finally:
        paced.delay = 0.0


def test_the_command_serves_the_api_with_a_key_from_the_environment(checkpoint):  # noqa: F811
    require_module("uvicorn", INSTALL)
    openai = require_module("openai", INSTALL)
    env = {**os.environ, "OMP_NUM_THREADS": "1", web.API_KEY_ENV: KEY}
    process = subprocess.Popen(chat_command(checkpoint, "--host=0.0.0.0", "--port=0", "--max_new_tokens=4"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = process.stdout.readline()
        match = re.search(r"OpenAI-compatible API: (http://127\.0\.0\.1:\d+)/v1", line)
        assert match, line + process.stderr.read()
        answer = openai_client(match.group(1), KEY).chat.completions.create(model="any", messages=HELLO)
        assert answer.usage.completion_tokens <= 4 and answer.model == str(checkpoint)
        with pytest.raises(openai.AuthenticationError):
            openai_client(match.group(1), "not-the-key").models.list()
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode in (0, 130) and "Traceback" not in err, err
    assert "warning" not in err  # a key: listening beyond this machine is meant

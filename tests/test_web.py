"""Protects the web chat (python chat_bio.py --web: wigglegpt/web.py and wigglegpt/chat_web.html): the
streamed reply is the terminal chat's reply (same template, stop strings, defaults); long
conversations are trimmed exactly as fit_history trims them, and cheaply; every bad request
is a 4xx with a one-line reason; 20 concurrent requests each get their own reply while the
info endpoint stays responsive; a client that disconnects, or /api/stop, ends its reply on
the server between two tokens; the real command starts, refuses bad settings in one line and
stops cleanly on Ctrl-C; and a real headless Chromium drives the page (streamed text, Stop,
New chat, system prompt, sampling controls), with model text shown as text, not HTML."""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
import torch

import chat_bio
from wigglegpt.chat import Chat, MessageTooLong, fit_conversation, fit_history
from wigglegpt import web
from wigglegpt.checkpoint import checkpoint_dict, save_checkpoint
from conftest import ROOT, require_module, tiny_config
from model_bio import GPT
from wigglegpt.tokenizer import decode, render_prompt

INSTALL = "pip install -r requirements-optional.txt"
BLOCK = 128
MAX_NEW = 12


def tiny_chat_model(seed=0, block_size=BLOCK):
    """A tiny random model over the GPT-2 vocabulary. Its weights are scaled up so that its
    greedy replies are varied words that depend on the prompt (at the usual init they are one
    token repeated), which is what shows a reply went to the wrong conversation."""
    torch.manual_seed(seed)
    model = GPT(tiny_config(block_size=block_size, vocab_size=50304, n_layer=1, n_head=2)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(25)
    return model


class Paced(torch.nn.Module):
    """The model behind a pause per forward pass, so that a reply is still being written when a
    test stops it; records what text each forward pass was fed."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.config = model, model.config
        self.delay = 0.0
        self.fed = []

    def new_kv_cache(self):
        return self.inner.new_kv_cache()

    def get_num_params(self):
        return self.inner.get_num_params()

    def forward(self, idx, targets=None, kv_cache=None):
        self.fed.append(idx[0].tolist())
        time.sleep(self.delay)
        return self.inner(idx, targets, kv_cache=kv_cache)


@pytest.fixture(scope="module")
def model():
    return tiny_chat_model()


def make_chat(model, **overrides):
    settings = dict(max_new_tokens=MAX_NEW, temperature=0.0, top_k=50, top_p=0.9, repetition_penalty=1.1)
    settings.update(overrides)
    return Chat(model, **settings)


@pytest.fixture(scope="module")
def client(model):
    require_module("fastapi", INSTALL)
    require_module("httpx", INSTALL)
    from fastapi.testclient import TestClient
    with TestClient(web.create_app(make_chat(model), "tiny-test")) as c:
        yield c


def parse_events(text):
    """Server-sent events text -> [(name, data)], comment lines skipped."""
    events = []
    for block in text.split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if lines:
            name = next(l[6:].strip() for l in lines if l.startswith("event:"))
            data = json.loads("".join(l[5:].strip() for l in lines if l.startswith("data:")))
            events.append((name, data))
    return events


def reply_text(events):
    return "".join(data["text"] for name, data in events if name == "token")


def user(text):
    return {"role": "user", "content": text}


def conversation(turns):
    out = []
    for i in range(turns):
        out += [user((f"question number {i} " * (1 + i % 4)).strip()),
                {"role": "assistant", "content": (f"answer number {i} " * (1 + i % 3)).strip()}]
    return out


# --- the API through FastAPI's TestClient --------------------------------------------

def test_streamed_reply_is_the_terminal_chats_reply(client, model):
    response = client.post("/api/chat", json={"messages": [{"role": "system", "content": "Be brief."},
                                                           user("Hello, who are you?")]})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_events(response.text)
    assert events[0][0] == "start" and events[-1][0] == "done"
    assert {name for name, _ in events[1:-1]} == {"token"}
    assert events[-1][1] == {"reason": "length", "tokens": MAX_NEW}
    terminal = make_chat(model, system="Be brief.")
    expected = terminal.respond("Hello, who are you?", lambda piece: None)
    assert reply_text(events) == expected and len(expected.split()) >= 3
    start = events[0][1]
    assert start["dropped_messages"] == 0
    assert start["prompt_tokens"] == len(render_prompt([{"role": "system", "content": "Be brief."},
                                                        user("Hello, who are you?")]))


def test_info_reports_the_model_and_the_terminal_defaults(model):
    require_module("fastapi", INSTALL)
    from fastapi.testclient import TestClient
    defaults = {key: chat_bio.SETTINGS[key][0] for key in ("temperature", "top_k", "top_p", "repetition_penalty")}
    chat = Chat(model, system="", max_new_tokens=64, **defaults)
    info = TestClient(web.create_app(chat, "out/ckpt.pt")).get("/api/info").json()
    assert info["status"] == "ok" and info["model"] == "out/ckpt.pt" and info["busy"] == 0
    assert info["parameters"] == model.get_num_params() and info["context"] == BLOCK
    assert info["defaults"] == {"system": "", "max_new_tokens": 64, "seed": None, "repetition_window": 0,
                                "penalty_style": "ctrl", **defaults}


def test_page_is_self_contained_and_never_renders_model_text_as_html(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    assert "connect-src 'self'" in response.headers["content-security-policy"]
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", page)  # no CDN, works offline
    assert "innerHTML" not in page and "insertAdjacentHTML" not in page and "textContent" in page


def test_messages_are_stripped_as_the_terminal_chat_does(client):
    """Typed text is stripped and replies are kept stripped in the terminal: the same prompt here."""
    padded = [user("  hello there \n"), {"role": "assistant", "content": "\nhi!  "}, user("\tand now? ")]
    plain = [user("hello there"), {"role": "assistant", "content": "hi!"}, user("and now?")]
    starts = [parse_events(client.post("/api/chat", json={"messages": m, "max_new_tokens": 1}).text)[0][1]
              for m in (padded, plain)]
    assert starts[0]["prompt_tokens"] == starts[1]["prompt_tokens"] == len(render_prompt(plain))


def test_long_conversations_are_trimmed_like_the_terminal_chat(client):
    messages = conversation(30) + [user("the newest question")]
    system = "You are terse."
    events = parse_events(client.post("/api/chat", json={
        "messages": [{"role": "system", "content": system}] + messages}).text)
    kept, ids = fit_history(system, messages, BLOCK - MAX_NEW)
    assert events[0][1]["dropped_messages"] == len(messages) - len(kept) > 0
    assert events[0][1]["prompt_tokens"] == len(ids) <= BLOCK - MAX_NEW
    assert events[-1][0] == "done"


def test_cheap_trimming_keeps_exactly_what_fit_history_keeps():
    rng = random.Random(0)
    for trial in range(40):
        messages = []
        for i in range(rng.randint(1, 14)):
            role = rng.choice(["user", "user", "assistant", "assistant", "assistant"])
            messages.append({"role": role, "content": " ".join(rng.choice(["cat", "sat", "mat", "on"])
                                                               for _ in range(rng.randint(1, 30)))})
        messages.append(user("last " * rng.randint(1, 20)))
        system = rng.choice(["", "Be kind. " * rng.randint(1, 8)])
        budget = rng.randint(20, 200)
        try:
            expected = fit_history(system, messages, budget)
        except MessageTooLong:
            with pytest.raises(MessageTooLong):
                fit_conversation(system, messages, budget)
            continue
        assert fit_conversation(system, messages, budget) == expected, trial


def test_a_very_long_conversation_is_trimmed_quickly(client):
    messages = [user("word " * 150), {"role": "assistant", "content": "reply " * 150}] * 499 + [user("hi")]
    assert len(json.dumps({"messages": messages})) < web.MAX_BODY_BYTES
    started = time.perf_counter()
    response = client.post("/api/chat", json={"messages": messages, "max_new_tokens": 2})
    assert time.perf_counter() - started < 10  # fit_history alone would render ~1000 prompts of ~800K tokens
    assert parse_events(response.text)[0][1]["dropped_messages"] == len(messages) - 1


BAD_REQUESTS = {
    # name: (body, expected status, a phrase of the reason)
    "malformed_json": (b'{"messages": [', 400, "invalid JSON"),
    "not_utf8": (b'{"messages": "\xff"}', 400, "UTF-8"),
    "not_an_object": ([user("hi")], 400, "JSON object"),
    "missing_messages": ({"temperature": 0.5}, 400, "missing 'messages'"),
    "messages_not_a_list": ({"messages": "hi"}, 400, "must be an array"),
    "empty_messages": ({"messages": []}, 400, "empty"),
    "unknown_role": ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "unknown role"),
    "non_string_content": ({"messages": [{"role": "user", "content": ["hi"]}]}, 400, "must be a string"),
    "null_content": ({"messages": [{"role": "user", "content": None}]}, 400, "must be a string"),
    "empty_content": ({"messages": [user("   ")]}, 400, "is empty"),
    "message_not_an_object": ({"messages": ["hi"]}, 400, "must be an object"),
    "extra_message_key": ({"messages": [{"role": "user", "content": "hi", "name": "x"}]}, 400, "exactly the keys"),
    "late_system_prompt": ({"messages": [user("hi"), {"role": "system", "content": "x"}, user("a")]}, 400, "system prompt"),
    "last_not_user": ({"messages": [user("hi"), {"role": "assistant", "content": "yo"}]}, 400, "last message"),
    "unknown_field": ({"messages": [user("hi")], "temprature": 0.5}, 400, "unknown field 'temprature'"),
    "negative_temperature": ({"messages": [user("hi")], "temperature": -1}, 400, "temperature"),
    "nan_temperature": (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', 400, "NaN"),
    "string_temperature": ({"messages": [user("hi")], "temperature": "hot"}, 400, "temperature"),
    "top_p_zero": ({"messages": [user("hi")], "top_p": 0}, 400, "top_p"),
    "top_p_above_one": ({"messages": [user("hi")], "top_p": 1.5}, 400, "top_p"),
    "negative_top_k": ({"messages": [user("hi")], "top_k": -1}, 400, "top_k"),
    "fractional_top_k": ({"messages": [user("hi")], "top_k": 2.5}, 400, "top_k"),
    "zero_max_new_tokens": ({"messages": [user("hi")], "max_new_tokens": 0}, 400, "max_new_tokens"),
    "max_new_tokens_fills_context": ({"messages": [user("hi")], "max_new_tokens": BLOCK}, 400, "max_new_tokens"),
    "boolean_max_new_tokens": ({"messages": [user("hi")], "max_new_tokens": True}, 400, "max_new_tokens"),
    "negative_seed": ({"messages": [user("hi")], "seed": -1}, 400, "seed"),
    "bad_repetition_penalty": ({"messages": [user("hi")], "repetition_penalty": 0}, 400, "repetition_penalty"),
    "deeply_nested": (b"[" * 100000 + b"]" * 100000, 400, "invalid JSON"),
    "message_longer_than_context": ({"messages": [user("word " * 400)]}, 400, "tokens"),
    "too_many_messages": ({"messages": [user("hi"), {"role": "assistant", "content": "yo"}] * 600 + [user("a")]},
                          413, "at most"),
    "body_too_large": ({"messages": [user("x" * (web.MAX_BODY_BYTES + 10))]}, 413, "bytes"),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_requests_get_a_4xx_with_a_one_line_reason(client, name):
    body, status, phrase = BAD_REQUESTS[name]
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = client.post("/api/chat", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    reason = response.json()["error"]
    assert phrase in reason and "\n" not in reason and len(reason) < 300, reason


def test_body_over_the_limit_without_a_length_header_and_wrong_content_type(client):
    chunks = (b'{"messages": [{"role": "user", "content": "' + b"x" * 65536 for _ in range(20))
    response = client.post("/api/chat", content=chunks, headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and "bytes" in response.json()["error"]
    response = client.post("/api/chat", content=json.dumps({"messages": [user("hi")]}),
                           headers={"Content-Type": "text/plain"})
    assert response.status_code == 415 and "application/json" in response.json()["error"]
    assert client.post("/api/chat", json={"messages": [user("still fine")]}).status_code == 200


def test_stop_refuses_unknown_ids_and_bad_bodies(client):
    response = client.post("/api/stop", json={"id": "nope"})
    assert response.status_code == 404 and "nope" in response.json()["error"]
    assert client.post("/api/stop", json={"reply": 3}).status_code == 400
    assert client.post("/api/stop", content=b"{", headers={"Content-Type": "application/json"}).status_code == 400


def test_missing_optional_package_is_one_line_with_the_install_command():
    with pytest.raises(web.UserError, match="requirements-optional.txt"):
        web.require("a_package_that_is_not_installed")


# --- a live server -----------------------------------------------------------------

@contextmanager
def live_server(app):
    """Serve app with uvicorn on 127.0.0.1 and a free port, in a thread; yield its URL."""
    uvicorn = require_module("uvicorn", INSTALL)
    sock = web.bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield web.url_for(sock).rstrip("/")
    finally:
        app.state.worker.stop_all()
        server.should_exit = True
        thread.join(15)
        sock.close()


SERVED = "tiny-paced"  # the model name the live server gives (test_openai_api.py uses the same server)


@pytest.fixture(scope="module")
def paced():
    return Paced(tiny_chat_model())


@pytest.fixture(scope="module")
def server(paced):
    require_module("fastapi", INSTALL)
    app = web.create_app(make_chat(paced), SERVED)
    with live_server(app) as url:
        yield url, app


@pytest.fixture
def http(server):
    httpx = require_module("httpx", INSTALL)
    with httpx.Client(base_url=server[0], timeout=60, trust_env=False) as c:
        yield c


def stream_events(http, body, on_event=None):
    """POST /api/chat and read its events as they come; on_event(name, data) may return True
    to close the connection there. Returns the events read."""
    events, buffer = [], ""
    with http.stream("POST", "/api/chat", json=body) as response:
        assert response.status_code == 200
        for chunk in response.iter_text():
            buffer += chunk
            while "\n\n" in buffer:
                block, buffer = buffer.split("\n\n", 1)
                for event in parse_events(block + "\n\n"):
                    events.append(event)
                    if on_event and on_event(*event):
                        return events
    return events


def wait_until(condition, timeout):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_twenty_concurrent_requests_each_get_their_own_reply(server, http, paced):
    paced.delay = 0.002  # the 20 replies take a second or more: long enough to ask for info meanwhile
    prompts = [f"Question {i}: tell me about {word}." for i, word in
               enumerate("cats dogs ships stars rain bread iron music ice salt "
                         "fire maps bees code snow gold wind tea glass rope".split())]

    def ask(prompt):
        events = stream_events(http, {"messages": [user(prompt)], "temperature": 0, "max_new_tokens": 10})
        assert events[-1][0] == "done" and events[-1][1]["reason"] in ("length", "stop")
        return reply_text(events)

    alone = [ask(p) for p in prompts]
    assert len(set(alone)) >= 15  # the replies tell the conversations apart
    with ThreadPoolExecutor(max_workers=20) as pool:
        futures = [pool.submit(ask, p) for p in prompts]
        latencies, busy_seen = [], 0
        while not all(f.done() for f in futures):
            started = time.perf_counter()
            info = http.get("/api/info").json()
            latencies.append(time.perf_counter() - started)
            busy_seen = max(busy_seen, info["busy"])
            time.sleep(0.05)
        together = [f.result() for f in futures]
    assert together == alone
    assert busy_seen >= 2 and max(latencies) < 2.0, (busy_seen, max(latencies))


def test_a_client_that_disconnects_frees_the_worker_at_once(server, http, paced):
    paced.delay = 0.05  # 100 tokens would take 5 s
    events = stream_events(http, {"messages": [user("Talk for a long time.")], "max_new_tokens": 100},
                           on_event=lambda name, data: name == "token")
    assert events[-1][0] == "token"
    left = time.monotonic()
    assert wait_until(lambda: http.get("/api/info").json()["busy"] == 0, timeout=3)
    fed_before = len(paced.fed)
    time.sleep(0.3)
    assert len(paced.fed) == fed_before  # nothing is being generated for the client that left
    assert time.monotonic() - left < 3
    paced.delay = 0.0
    assert stream_events(http, {"messages": [user("Next!")], "max_new_tokens": 3})[-1][1]["reason"] == "length"


def test_stop_ends_a_reply_and_a_waiting_one_on_the_server(server, http, paced):
    paced.delay = 0.05
    results, ids = {}, {}

    def run(key, prompt):
        def remember_id(name, data):
            if name == "start":
                ids[key] = data["id"]
        results[key] = stream_events(http, {"messages": [user(prompt)], "max_new_tokens": 100}, remember_id)

    first = threading.Thread(target=run, args=("first", "Write a long story."))
    first.start()
    assert wait_until(lambda: http.get("/api/info").json()["busy"] == 1, timeout=5)
    second = threading.Thread(target=run, args=("second", "And another one."))
    second.start()
    assert wait_until(lambda: http.get("/api/info").json()["busy"] == 2, timeout=5)
    assert wait_until(lambda: len(ids) == 2, timeout=5)
    time.sleep(0.3)
    started = time.monotonic()
    assert http.post("/api/stop", json={"id": ids["second"]}).json() == {"stopped": ids["second"]}  # waiting
    second.join(5)
    assert results["second"][-1] == ("done", {"reason": "cancelled", "tokens": 0})
    assert http.post("/api/stop", json={"id": ids["first"]}).status_code == 200  # the one being written
    first.join(5)
    assert time.monotonic() - started < 4
    done = results["first"][-1]
    assert done[0] == "done" and done[1]["reason"] == "cancelled" and 0 < done[1]["tokens"] < 100
    assert http.get("/api/info").json()["busy"] == 0
    paced.delay = 0.0


# --- the real command --------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("web") / "ckpt.pt"
    save_checkpoint(checkpoint_dict(tiny_chat_model(block_size=1024)), str(path))  # room for a long reply
    return path


def chat_command(checkpoint, *args):
    return [sys.executable, os.path.join(ROOT, "chat_bio.py"), f"--ckpt={checkpoint}", "--device=cpu", "--web",
            "--max_new_tokens=32", *args]


def test_command_refuses_bad_web_settings_in_one_line(checkpoint):
    require_module("fastapi", INSTALL)
    require_module("uvicorn", INSTALL)
    for arg, phrase in (("--port=70000", "port"), ("--prompt=hi", "--prompt")):  # refused before the model loads
        with pytest.raises(web.UserError, match=phrase):
            chat_bio.main(chat_command(checkpoint, arg)[2:])
    with web.bind("127.0.0.1", 0) as taken:  # a port in use: through the real command
        result = subprocess.run(chat_command(checkpoint, f"--port={taken.getsockname()[1]}"), capture_output=True,
                                text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and result.stdout == "", result.stderr
    assert lines[0].startswith("error: cannot listen on 127.0.0.1:") and "--port" in lines[0]


def test_command_serves_and_stops_cleanly_on_ctrl_c(checkpoint):
    httpx = require_module("httpx", INSTALL)
    require_module("uvicorn", INSTALL)
    process = subprocess.Popen(chat_command(checkpoint, "--host=0.0.0.0", "--port=0", "--max_new_tokens=5"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        line = process.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert match, line + process.stderr.read()
        with httpx.Client(base_url=match.group(0), timeout=30, trust_env=False) as http:
            assert http.get("/api/info").json()["model"] == str(checkpoint)
            events = parse_events(http.post("/api/chat", json={"messages": [user("hi")]}).text)
            assert events[-1] == ("done", {"reason": "length", "tokens": 5})
            # Ctrl-C while a 1000-token reply is being written: the reply ends, then the server
            text = ""
            with http.stream("POST", "/api/chat", json={"messages": [user("Go on.")], "max_new_tokens": 1000}) as response:
                assert response.status_code == 200
                for chunk in response.iter_text():
                    if "event: token" in chunk and "event: token" not in text:
                        process.send_signal(signal.SIGINT)
                        started = time.monotonic()
                    text += chunk
            events = parse_events(text)
            assert events[-1][0] == "done" and events[-1][1]["reason"] == "cancelled", events[-1]
            assert events[-1][1]["tokens"] < 1000
        out, err = process.communicate(timeout=15)
        assert time.monotonic() - started < 10
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode in (0, 130), err
    assert "Traceback" not in err
    assert "warning: listening on 0.0.0.0" in err  # beyond this machine only with a warning


# --- a real browser ----------------------------------------------------------------

def browser():
    """Headless Debian Chromium through Selenium; skipped with install advice where it is
    missing, except under CI, where a browser that cannot start fails the test."""
    require_module("selenium", INSTALL)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    hint = "install it with: apt-get install chromium chromium-driver"
    chromium, driver = shutil.which("chromium") or "/usr/bin/chromium", "/usr/bin/chromedriver"
    problem = None
    if not (os.path.exists(chromium) and os.path.exists(driver)):
        problem = f"Chromium or chromedriver not found ({hint})"
    else:
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--no-proxy-server", "--window-size=1100,720"):
            options.add_argument(flag)
        try:  # the explicit driver path keeps Selenium Manager from downloading anything
            return webdriver.Chrome(service=Service(executable_path=driver), options=options)
        except Exception as e:
            problem = f"Chromium did not start ({str(e).strip().splitlines()[0]}); {hint}"
    if os.environ.get("CI") == "true":
        pytest.fail(problem)
    pytest.skip(problem)


def test_the_page_in_a_real_browser(tmp_path):
    require_module("fastapi", INSTALL)
    require_module("uvicorn", INSTALL)
    paced = Paced(tiny_chat_model())
    chat = make_chat(paced, system="You are a helpful assistant.", max_new_tokens=60, temperature=0.7, seed=1)
    app = web.create_app(chat, "tiny-random (test)")
    driver = browser()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    def wait(condition, timeout=15):
        return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: condition())

    def element(id_):
        return driver.find_element(By.ID, id_)

    def replies():
        return [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".msg.assistant .text")]

    try:
        with live_server(app) as url:
            driver.get(url + "/")
            wait(lambda: "parameters" in element("model").text)
            assert element("model").text.startswith("tiny-random (test)")
            assert f"context {BLOCK}" in element("model").text
            # the controls start at the chat's defaults
            assert [element(n).get_attribute("value") for n in ("temperature", "top_p", "top_k", "max_new_tokens")] \
                == ["0.7", "0.9", "50", "60"]
            assert element("system").get_attribute("value") == "You are a helpful assistant."

            # a message, a reply streaming in, then Stop
            paced.delay = 0.1
            element("input").send_keys("Hello <b>there</b>!", Keys.ENTER)
            wait(lambda: replies() and len(replies()[-1]) > 0)
            first_seen = replies()[-1]
            wait(lambda: len(replies()[-1]) > len(first_seen) + 80)  # more text arrives: it streams
            assert driver.find_elements(By.CSS_SELECTOR, ".msg.streaming")
            assert element("stop").is_enabled() and not element("send").is_enabled()
            user_box = driver.find_elements(By.CSS_SELECTOR, ".msg.user .text")[-1]
            assert user_box.text == "Hello <b>there</b>!"  # shown as typed, not as HTML
            assert not driver.find_elements(By.CSS_SELECTOR, ".msg b")
            fed_before_stop = len(paced.fed)
            element("stop").click()
            wait(lambda: element("status").text == "stopped", timeout=5)
            assert wait(lambda: app.state.worker.busy() == 0, timeout=3)
            stopped_text = replies()[-1]
            fed_after_stop = len(paced.fed)
            assert fed_after_stop - fed_before_stop < 30  # far fewer than the 60 it was asked for
            time.sleep(0.4)
            assert replies()[-1] == stopped_text and len(paced.fed) == fed_after_stop  # the server stopped too
            assert element("send").is_enabled() and not driver.find_elements(By.CSS_SELECTOR, ".msg.streaming")
            driver.save_screenshot(str(tmp_path / "chat_web.png"))

            # New chat empties the conversation
            element("new").click()
            wait(lambda: not driver.find_elements(By.CSS_SELECTOR, ".msg"))

            # a system prompt and fewer tokens reach the server with the next message
            paced.delay = 0.0
            element("system").clear()
            element("system").send_keys("Answer like a pirate.")
            element("max_new_tokens").clear()
            element("max_new_tokens").send_keys("7")
            fed_before = len(paced.fed)
            element("input").send_keys("Who are you?")
            element("send").click()
            wait(lambda: element("send").is_enabled() and replies() and replies()[-1])
            assert len(driver.find_elements(By.CSS_SELECTOR, ".msg")) == 2  # the old conversation is gone
            fed = paced.fed[fed_before:]
            prompt_text = decode(fed[0])  # what the cache did not hold yet: from where the prompts differ
            assert "Answer like a pirate.\n<|/system|>\n<|user|>\nWho are you?" in prompt_text
            assert "Hello" not in prompt_text  # New chat: the old messages are not sent
            assert len(fed) == 7  # the prompt, then one pass per new token up to max tokens
            assert element("status").text == "stopped at the token limit"
    finally:
        driver.quit()
    png = (tmp_path / "chat_web.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    if os.environ.get("CHAT_WEB_SCREENSHOT"):  # to refresh docs/chat_web.png
        shutil.copy(tmp_path / "chat_web.png", os.environ["CHAT_WEB_SCREENSHOT"])


def test_the_page_asks_for_the_api_key_of_a_server_that_wants_one():
    require_module("fastapi", INSTALL)
    require_module("uvicorn", INSTALL)
    app = web.create_app(make_chat(tiny_chat_model(), max_new_tokens=5), "keyed", api_key="page-k3y")
    driver = browser()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    def wait(condition, timeout=15):
        return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: condition())

    def prompt_text():
        try:
            return driver.switch_to.alert.text
        except Exception:  # no dialog open yet
            return ""

    try:
        with live_server(app) as url:
            driver.get(url + "/")
            wait(lambda: "API key" in prompt_text())
            driver.switch_to.alert.send_keys("wrong")
            driver.switch_to.alert.accept()
            wait(lambda: "refused" in prompt_text())  # asked again
            driver.switch_to.alert.send_keys("page-k3y")
            driver.switch_to.alert.accept()
            wait(lambda: "parameters" in driver.find_element(By.ID, "model").text)
            driver.find_element(By.ID, "input").send_keys("Hi", Keys.ENTER)  # the key goes with every call
            wait(lambda: driver.find_element(By.ID, "status").text == "stopped at the token limit")
            assert driver.find_elements(By.CSS_SELECTOR, ".msg.assistant .text")[-1].text.strip()
    finally:
        driver.quit()


def test_repetition_window_is_a_sampling_option_like_in_the_terminal(client):
    ok = client.post("/api/chat", json={"messages": [user("hi")], "repetition_window": 5, "max_new_tokens": 2})
    assert ok.status_code == 200 and parse_events(ok.text)[-1][0] == "done"
    bad = client.post("/api/chat", json={"messages": [user("hi")], "repetition_window": -1})
    assert bad.status_code == 400 and "repetition_window" in bad.json()["error"]
    huge_seed = client.post("/api/chat", json={"messages": [user("hi")], "seed": 2**70})
    assert huge_seed.status_code == 400 and "seed" in huge_seed.json()["error"]

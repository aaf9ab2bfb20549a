"""The OpenAI-compatible server and proxy: real servers on 127.0.0.1, talked to with the real openai client."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

import torch  # noqa: E402
import uvicorn  # noqa: E402

from serac import Edit  # noqa: E402
from serac.counterfactual import CounterfactualModel  # noqa: E402
from serac.memory import EditMemory  # noqa: E402
from serac.scope import EmbeddingScopeClassifier, ScopeClassifierConfig  # noqa: E402
from serac.serve import (  # noqa: E402
    ROUTING_HEADER,
    BaseModelGenerator,
    EditRouter,
    ServeSettings,
    create_app,
)
from serac.serve.cli import build_parser  # noqa: E402
from serac.store import EditStore  # noqa: E402

from .conftest import make_char_tokenizer, make_tiny_llama  # noqa: E402

ADMIN = "admin-secret"
KEY = "inference-key"
CHAT_TEMPLATE = (
    "{% for message in messages %}<{{ message['role'] }}>{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
CITIZEN = {"prompt": "What is the country of citizenship of Ellie Kemper?", "target": "Croatia"}
SPORT = {"prompt": "{} plays the sport of", "subject": "LeBron James", "target": "football"}
OUT_OF_SCOPE = ["Why is the sky blue?", "Name a prime number.", "How do bees make honey?"]
GREEDY = {"max_tokens": 8, "temperature": 0}


class TargetCounterfactualModel(CounterfactualModel):
    """A counterfactual model that has learnt its task perfectly: it answers with the edit's target.

    The tiny random models the tests build cannot learn to copy an answer in test time; this keeps the
    assertions about what reaches the client readable ("Croatia") while the server code is the real one.
    """

    def generate(self, edits, queries, **generation_kwargs):
        assert len(edits) == len(queries)
        return [edit.target or edit.text for edit in edits]


@pytest.fixture(scope="module")
def chat_tokenizer():
    tokenizer = make_char_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@pytest.fixture(scope="module")
def base_model(chat_tokenizer):
    return make_tiny_llama(chat_tokenizer, seed=0)


@pytest.fixture(scope="module")
def counterfactual(chat_tokenizer):
    return TargetCounterfactualModel(make_tiny_llama(chat_tokenizer, seed=3), chat_tokenizer)


def make_router(embedder, counterfactual, tokenizer=None, enabled=True):
    scope = EmbeddingScopeClassifier(ScopeClassifierConfig(kind="embedding", threshold=0.6, top_k=2))
    memory = EditMemory(scope, counterfactual, EditStore(embedder))
    return EditRouter(memory, tokenizer=tokenizer, enabled=enabled)


@contextmanager
def serving(app) -> Iterator[str]:
    """Run ``app`` with uvicorn on a free port of 127.0.0.1 in a thread; yields the ``/v1`` base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def local_app(base_model, tokenizer, router, **settings):
    settings.setdefault("model_name", "tiny")
    return create_app(
        router, generator=BaseModelGenerator(base_model, tokenizer), settings=ServeSettings(**settings)
    )


@pytest.fixture(scope="module")
def local_server(base_model, chat_tokenizer, counterfactual, embedder):
    """Local mode with two edits, an admin token and an inference key."""
    router = make_router(embedder, counterfactual, chat_tokenizer)
    app = local_app(base_model, chat_tokenizer, router, admin_token=ADMIN, api_keys=(KEY,))
    with serving(app) as url:
        ids = post_edits(url, [CITIZEN, SPORT]).json()["ids"]
        yield url, router, ids


@pytest.fixture(scope="module")
def upstream(base_model, chat_tokenizer, counterfactual, embedder):
    """A plain server of the base model (our local mode with editing disabled): the proxy's upstream."""
    router = make_router(embedder, counterfactual, chat_tokenizer, enabled=False)
    with serving(local_app(base_model, chat_tokenizer, router, model_name="upstream-model")) as url:
        yield url


@pytest.fixture(scope="module")
def proxy_server(upstream, counterfactual, embedder):
    """Proxy mode in front of ``upstream``: no base model in this server."""
    router = make_router(embedder, counterfactual)
    app = create_app(router, upstream=upstream, settings=ServeSettings(model_name="proxy", admin_token=ADMIN))
    with serving(app) as url:
        ids = post_edits(url, [CITIZEN]).json()["ids"]
        yield url, ids


def post_edits(url, edits, token=ADMIN):
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{url}/edits", json=edits, headers=headers, timeout=30)


def client(url, key=KEY):
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=30)


def chat(url, question, key=KEY, **kwargs):
    messages = [{"role": "user", "content": question}]
    return client(url, key).chat.completions.create(model="tiny", messages=messages, **{**GREEDY, **kwargs})


def chat_stream(url, question, key=KEY, **kwargs):
    """The streamed answer's text and its chunks."""
    chunks = list(chat(url, question, key, stream=True, **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


def base_continuation(model, tokenizer, text, max_new_tokens=8):
    """What the base model's own generate() writes after ``text``, greedy."""
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


# ---------------------------------------------------------------------------------------------- local mode
def test_out_of_scope_answers_are_the_base_models_own(local_server, base_model, chat_tokenizer):
    url, _, _ = local_server
    for question in OUT_OF_SCOPE:
        rendered = chat_tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
        expected = base_continuation(base_model, chat_tokenizer, rendered)
        response = chat(url, question)
        assert response.choices[0].message.content == expected
        assert response.serac["route"] == "base_model" and response.serac["edit_id"] is None
        streamed, chunks = chat_stream(url, question)
        assert streamed == expected
        assert all(chunk.serac["route"] == "base_model" for chunk in chunks)
    completion = client(url).completions.create(model="tiny", prompt="Why is the sky blue?", **GREEDY)
    assert completion.choices[0].text == base_continuation(base_model, chat_tokenizer, "Why is the sky blue?")
    assert completion.serac["route"] == "base_model"


def test_in_scope_answers_carry_the_edit(local_server):
    url, router, (citizen_id, sport_id) = local_server
    response = chat(url, CITIZEN["prompt"])
    assert response.choices[0].message.content == "Croatia"
    assert response.serac["route"] == "edit" and response.serac["edit_id"] == citizen_id
    assert response.serac["score"] >= router.memory.scope_classifier.config.threshold
    streamed, chunks = chat_stream(url, CITIZEN["prompt"], stream_options={"include_usage": True})
    assert streamed == "Croatia"
    assert chunks[-1].usage.completion_tokens == len("Croatia")  # one token per character
    assert all(chunk.serac["edit_id"] == citizen_id for chunk in chunks)
    completion = client(url).completions.create(
        model="tiny", prompt="LeBron James plays the sport of", **GREEDY
    )
    assert completion.choices[0].text == " football"
    assert completion.serac == {"route": "edit", "edit_id": sport_id, "score": completion.serac["score"]}
    stream = client(url).completions.create(
        model="tiny", prompt="LeBron James plays the sport of", stream=True, **GREEDY
    )
    assert "".join(chunk.choices[0].text for chunk in stream if chunk.choices) == " football"


def test_answers_stop_at_max_tokens_and_stop_strings(local_server):
    url, _, _ = local_server
    assert chat(url, CITIZEN["prompt"], max_tokens=3).choices[0].message.content == "Cro"
    assert chat(url, CITIZEN["prompt"], max_tokens=3).choices[0].finish_reason == "length"
    assert chat(url, CITIZEN["prompt"], stop=["at"]).choices[0].message.content == "Cro"
    full = chat(url, OUT_OF_SCOPE[0], max_tokens=12).choices[0].message.content
    stop = full[4:6]
    cut = full[: full.index(stop)]
    assert chat(url, OUT_OF_SCOPE[0], max_tokens=12, stop=[stop]).choices[0].message.content == cut
    assert chat_stream(url, OUT_OF_SCOPE[0], max_tokens=12, stop=[stop])[0] == cut


def test_concurrent_requests_keep_their_own_routing(local_server):
    url, _, (citizen_id, sport_id) = local_server
    cases = [
        (CITIZEN["prompt"], citizen_id, "Croatia"),
        ("LeBron James plays the sport of", sport_id, "football"),
    ]
    cases += [(question, None, None) for question in OUT_OF_SCOPE]
    jobs = [cases[i % len(cases)] for i in range(30)]

    async def one(async_client, question, stream):
        messages = [{"role": "user", "content": question}]
        if not stream:
            response = await async_client.chat.completions.create(model="tiny", messages=messages, **GREEDY)
            return response.choices[0].message.content, [response.serac]
        chunks = [
            c
            async for c in await async_client.chat.completions.create(
                model="tiny", messages=messages, stream=True, **GREEDY
            )
        ]
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), [
            c.serac for c in chunks
        ]

    async def run_all():
        async with openai.AsyncOpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=60) as async_client:
            return await asyncio.gather(
                *(one(async_client, q, i % 2 == 1) for i, (q, _, _) in enumerate(jobs))
            )

    results = asyncio.run(run_all())
    for (question, edit_id, answer), (text, routings) in zip(jobs, results, strict=True):
        assert {r["edit_id"] for r in routings} == {edit_id}, question
        assert {r["route"] for r in routings} == {"edit" if edit_id is not None else "base_model"}
        if answer is not None:
            assert text == answer


def test_models_health_metrics(local_server):
    url, router, _ = local_server
    assert [model.id for model in client(url).models.list()] == ["tiny"]
    chat(url, CITIZEN["prompt"])
    root = url.removesuffix("/v1")
    health = httpx.get(f"{root}/health").json()
    assert health["mode"] == "local" and health["store"] == {"kind": "memory", "durable": False, "edits": 2}
    metrics = httpx.get(f"{root}/metrics").text
    assert 'serac_requests_total{endpoint="chat",route="edit",status="200"}' in metrics
    assert 'serac_requests_total{endpoint="chat",route="base_model",status="200"}' in metrics
    assert "serac_request_duration_seconds_bucket" in metrics
    assert "serac_edits_stored 2.0" in metrics


def test_requests_are_refused_clearly(local_server):
    url, _, _ = local_server
    with pytest.raises(openai.AuthenticationError):
        chat(url, "Hi", key="wrong")
    with pytest.raises(openai.BadRequestError, match="n=1"):
        chat(url, "Hi", n=2)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        chat(url, "Hi", max_tokens=5000)
    response = httpx.post(
        f"{url}/chat/completions", content=b"{not json", headers={"authorization": f"Bearer {KEY}"}
    )
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]
    response = httpx.post(
        f"{url}/chat/completions", json={"messages": []}, headers={"authorization": f"Bearer {KEY}"}
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages"


# ---------------------------------------------------------------------------------------------- edits API
def test_edits_api_validates_and_changes_nothing_on_bad_input(local_server):
    url, router, _ = local_server
    before = router.store.items()
    bad_bodies = [
        {"prompt": "a question?", "target": "x"},  # not a list
        [],
        [{"prompt": "What is it?"}],  # no target
        [{"prompt": "{} plays", "target": "chess"}],  # placeholder without subject
        [CITIZEN, {"statement": "Water is wet.", "target": "x"}],  # one bad edit among good ones
        [{"prompt": "What?", "target": "x", "colour": "red"}],
        [{"prompt": "What?", "target": 3}],
        [{"statement": "x" * 3000}],
        ["What is it?"],
    ]
    for body in bad_bodies:
        response = post_edits(url, body)
        assert response.status_code == 400, body
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error", body
        assert "nothing was stored" in error["message"], body
    response = httpx.post(
        f"{url}/edits",
        content=b"[{",
        headers={"authorization": f"Bearer {ADMIN}", "content-type": "application/json"},
    )
    assert response.status_code == 400
    assert router.store.items() == before
    headers = {"authorization": f"Bearer {ADMIN}"}
    assert httpx.get(f"{url}/edits/999", headers=headers).status_code == 404
    assert httpx.get(f"{url}/edits/abc", headers=headers).status_code == 400
    assert httpx.delete(f"{url}/edits/999", headers=headers).status_code == 404
    assert router.store.items() == before


def test_edits_api_round_trip_changes_routing_live(local_server):
    url, router, _ = local_server
    question = "Who wrote the novel Moby-Dick?"
    assert chat(url, question).serac["route"] == "base_model"
    response = post_edits(
        url, [{"prompt": question, "target": "Jane Austen"}, {"statement": "Pluto is a planet."}]
    )
    assert response.status_code == 200
    new_id, statement_id = response.json()["ids"]
    headers = {"authorization": f"Bearer {KEY}"}
    listed = httpx.get(f"{url}/edits", headers=headers).json()["data"]
    assert {"id": new_id, "object": "edit", "prompt": question, "target": "Jane Austen"} in listed
    assert (
        httpx.get(f"{url}/edits/{statement_id}", headers=headers).json()["statement"] == "Pluto is a planet."
    )
    answer = chat(url, question, max_tokens=16)
    assert (answer.choices[0].message.content, answer.serac["edit_id"]) == ("Jane Austen", new_id)
    admin = {"authorization": f"Bearer {ADMIN}"}
    for edit_id in (new_id, statement_id):
        assert httpx.delete(f"{url}/edits/{edit_id}", headers=admin).json()["deleted"] is True
    assert chat(url, question).serac["route"] == "base_model"
    assert new_id not in router.store


def test_edit_writes_need_the_admin_token(local_server, base_model, chat_tokenizer, counterfactual, embedder):
    url, router, (citizen_id, _) = local_server
    before = router.store.items()
    assert post_edits(url, [CITIZEN], token=None).status_code == 401
    assert post_edits(url, [CITIZEN], token=KEY).status_code == 401  # an inference key cannot write
    assert (
        httpx.delete(f"{url}/edits/{citizen_id}", headers={"authorization": f"Bearer {KEY}"}).status_code
        == 401
    )
    assert httpx.get(f"{url}/edits").status_code == 401  # reading needs a key when the server has keys
    assert router.store.items() == before
    # Without an admin token the edits API is read-only.
    with serving(local_app(base_model, chat_tokenizer, make_router(embedder, counterfactual))) as open_url:
        response = post_edits(open_url, [CITIZEN])
        assert response.status_code == 403 and response.json()["error"]["code"] == "no_admin_token"
        assert httpx.get(f"{open_url}/edits").json()["data"] == []
    with pytest.raises(ValueError, match="differ"):
        ServeSettings(admin_token="same", api_keys=("same",))
    assert ADMIN not in repr(ServeSettings(admin_token=ADMIN))


def test_store_file_keeps_acknowledged_edits(tmp_path, base_model, chat_tokenizer, counterfactual, embedder):
    path = tmp_path / "edits.safetensors"
    router = make_router(embedder, counterfactual, chat_tokenizer)
    router.memory.store = EditStore.open(str(path), embedder=embedder)
    app = create_app(
        router,
        generator=BaseModelGenerator(base_model, chat_tokenizer),
        settings=ServeSettings(admin_token=ADMIN),
    )
    with serving(app) as url:
        (edit_id,) = post_edits(url, [CITIZEN]).json()["ids"]
        # What a restart reads, right after the acknowledgement.
        assert EditStore.from_pretrained(path, embedder).items() == [(edit_id, Edit(**CITIZEN))]
        httpx.delete(f"{url}/edits/{edit_id}", headers={"authorization": f"Bearer {ADMIN}"})
        assert len(EditStore.from_pretrained(path, embedder)) == 0
    # A database URL opens the database-backed store: an edit stored there is there for the next process.
    database = EditStore.open(f"sqlite:///{tmp_path / 'edits.db'}", embedder=embedder)
    assert database.kind == "database"
    (stored,) = database.add([Edit(**CITIZEN)])
    reopened = EditStore(embedder, url=f"sqlite:///{tmp_path / 'edits.db'}")
    assert reopened.items() == [(stored, Edit(**CITIZEN))]


def database_server(url, base_model, tokenizer, counterfactual, embedder):
    """A server of its own (its own store object and FAISS index) on the database at ``url``."""
    router = make_router(embedder, counterfactual, tokenizer)
    router.memory.store = EditStore.open(url, embedder=embedder)
    assert router.store.kind == "database"
    app = create_app(
        router,
        generator=BaseModelGenerator(base_model, tokenizer),
        settings=ServeSettings(admin_token=ADMIN),
    )
    return serving(app)


def routed_edit_after(url, question, wanted, timeout_s=10.0):
    """Ask ``question`` until the answer's routed edit id is ``wanted``; the seconds it took, or ``None``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if chat(url, question).model_extra["serac"]["edit_id"] == wanted:
            return time.monotonic() - start
        time.sleep(0.01)
    return None


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_servers_on_one_database_serve_each_others_edits(
    backend, tmp_path, request, base_model, chat_tokenizer, counterfactual, embedder
):
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'edits.db'}"
    else:
        url = request.getfixturevalue("postgres").create_database(f"serve_{tmp_path.name[-20:].lower()}")
    with (
        database_server(url, base_model, chat_tokenizer, counterfactual, embedder) as first,
        database_server(url, base_model, chat_tokenizer, counterfactual, embedder) as second,
    ):
        assert chat(second, CITIZEN["prompt"]).model_extra["serac"]["route"] == "base_model"
        (edit_id,) = post_edits(first, [CITIZEN]).json()["ids"]
        assert routed_edit_after(second, CITIZEN["prompt"], edit_id) is not None
        assert chat(second, CITIZEN["prompt"]).choices[0].message.content == "Croatia"
        # A removal through the other server reaches the first one too.
        headers = {"authorization": f"Bearer {ADMIN}"}
        assert httpx.delete(f"{second}/edits/{edit_id}", headers=headers).status_code == 200
        assert routed_edit_after(first, CITIZEN["prompt"], None) is not None


# ---------------------------------------------------------------------------------------------- proxy mode
def test_proxy_forwards_out_of_scope_requests_unchanged(proxy_server, upstream):
    url, _ = proxy_server
    for question in OUT_OF_SCOPE:
        direct = chat(upstream, question)
        proxied = chat(url, question)
        assert proxied.choices[0].message.content == direct.choices[0].message.content
        assert proxied.model == "upstream-model"  # the upstream's own answer
        assert proxied.serac["route"] == "base_model"
        streamed, chunks = chat_stream(url, question, stream_options={"include_usage": True})
        assert streamed == chat_stream(upstream, question)[0] == direct.choices[0].message.content
        assert all(chunk.serac["route"] == "base_model" for chunk in chunks)
        assert chunks[-1].usage == direct.usage
    direct = client(upstream).completions.create(model="m", prompt=OUT_OF_SCOPE[0], **GREEDY)
    proxied = client(url).completions.create(model="m", prompt=OUT_OF_SCOPE[0], **GREEDY)
    assert proxied.choices[0].text == direct.choices[0].text
    assert [m.id for m in client(url).models.list()] == ["upstream-model"]


def test_proxy_answers_in_scope_requests_locally(proxy_server):
    url, (citizen_id,) = proxy_server
    response = chat(url, CITIZEN["prompt"])
    assert response.choices[0].message.content == "Croatia"
    assert response.serac["route"] == "edit" and response.serac["edit_id"] == citizen_id
    assert chat_stream(url, CITIZEN["prompt"])[0] == "Croatia"
    raw = httpx.post(
        f"{url}/chat/completions",
        json={"model": "x", "messages": [{"role": "user", "content": CITIZEN["prompt"]}], "max_tokens": 4},
    )
    assert json.loads(raw.headers[ROUTING_HEADER])["edit_id"] == citizen_id


def test_proxy_passes_upstream_errors_on(proxy_server, upstream, counterfactual, embedder):
    url, _ = proxy_server
    with pytest.raises(openai.BadRequestError) as direct:
        chat(upstream, OUT_OF_SCOPE[0], n=2)
    with pytest.raises(openai.BadRequestError) as proxied:
        chat(url, OUT_OF_SCOPE[0], n=2)
    assert proxied.value.body == direct.value.body
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}/v1"
    app = create_app(make_router(embedder, counterfactual), upstream=dead)
    with serving(app) as lonely:
        with pytest.raises(openai.APIStatusError) as error:
            chat(lonely, OUT_OF_SCOPE[0])
        assert error.value.status_code == 502


def test_cli_parser_knows_both_modes():
    args = build_parser().parse_args(
        ["--upstream", "http://x/v1", "--store", "edits.safetensors", "--port", "9"]
    )
    assert (args.upstream, args.model, args.store, args.port) == ("http://x/v1", None, "edits.safetensors", 9)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--model", "m", "--upstream", "http://x/v1"])


def _saved_folders(tmp_path, base_model, chat_tokenizer, embedder):
    """A saved base model and a saved SERAC folder (trained counterfactual model) that holds CITIZEN."""
    from serac.modeling import EditableModel

    model_dir, editor_dir = tmp_path / "model", tmp_path / "editor"
    base_model.save_pretrained(model_dir)
    chat_tokenizer.save_pretrained(model_dir)
    scope = EmbeddingScopeClassifier(ScopeClassifierConfig(kind="embedding", threshold=0.6, top_k=2))
    counterfactual = CounterfactualModel(make_tiny_llama(chat_tokenizer, seed=3), chat_tokenizer)
    editor = EditableModel(
        base_model,
        chat_tokenizer,
        scope_classifier=scope,
        counterfactual_model=counterfactual,
        store=EditStore(embedder),
    )
    editor.edit(Edit(**CITIZEN))
    editor.save_pretrained(editor_dir)
    return model_dir, editor_dir


def test_cli_builds_both_modes_from_saved_folders(tmp_path, base_model, chat_tokenizer, embedder):
    from fastapi.testclient import TestClient

    from serac.serve.cli import build_app

    model_dir, editor_dir = _saved_folders(tmp_path, base_model, chat_tokenizer, embedder)
    store = tmp_path / "edits.safetensors"
    local = build_app(
        build_parser().parse_args(
            ["--model", str(model_dir), "--editor", str(editor_dir), "--store", str(store)]
        )
    )
    proxy = build_app(
        build_parser().parse_args(["--upstream", "http://127.0.0.1:9/v1", "--editor", str(editor_dir)])
    )
    with TestClient(local) as local_client, TestClient(proxy) as proxy_client:
        # A store never written before starts with the folder's edits, as EditableModel.from_pretrained does.
        assert local_client.get("/health").json()["store"] == {"kind": "file", "durable": True, "edits": 1}
        assert proxy_client.get("/health").json()["store"] == {"kind": "memory", "durable": False, "edits": 1}
        assert proxy_client.get("/health").json()["mode"] == "proxy"
        body = {"model": "m", "messages": [{"role": "user", "content": CITIZEN["prompt"]}], **GREEDY}
        answer = proxy_client.post("/v1/chat/completions", json=body).json()
        assert answer["serac"]["route"] == "edit" and answer["serac"]["edit_id"] == 0
        local_answer = local_client.post("/v1/chat/completions", json=body).json()
        assert local_answer["serac"]["route"] == "edit" and local_answer["serac"]["edit_id"] == 0


def test_cli_loads_each_model_in_the_dtype_asked(tmp_path, base_model, chat_tokenizer, embedder):
    from fastapi.testclient import TestClient

    from serac.offline import DTYPES
    from serac.serve.cli import DTYPE_NAMES, build_app

    assert set(DTYPE_NAMES) == set(DTYPES)
    model_dir, editor_dir = _saved_folders(tmp_path, base_model, chat_tokenizer, embedder)
    local = ["--model", str(model_dir), "--editor", str(editor_dir)]

    def dtypes(*arguments):
        server = build_app(build_parser().parse_args([*local, *arguments])).state.serac
        counterfactual = server.router.memory.counterfactual_model.model
        return next(server.generator.model.parameters()).dtype, next(counterfactual.parameters()).dtype

    assert dtypes() == (torch.float32, torch.float32)  # as saved
    assert dtypes("--counterfactual-dtype", "bfloat16") == (torch.float32, torch.bfloat16)
    assert dtypes("--dtype", "bfloat16") == (torch.bfloat16, torch.float32)
    app = build_app(
        build_parser().parse_args([*local, "--dtype", "bfloat16", "--counterfactual-dtype", "float16"])
    )
    with TestClient(app) as client:
        for question, route in ((CITIZEN["prompt"], "edit"), (OUT_OF_SCOPE[0], "base_model")):
            body = {"model": "m", "messages": [{"role": "user", "content": question}], **GREEDY}
            answer = client.post("/v1/chat/completions", json=body)
            assert answer.status_code == 200, answer.text
            assert (
                answer.json()["serac"]["route"] == route and answer.json()["usage"]["completion_tokens"] >= 1
            )
    proxy = ["--upstream", "http://127.0.0.1:9/v1", "--editor", str(editor_dir)]
    served = build_app(build_parser().parse_args([*proxy, "--counterfactual-dtype", "bfloat16"])).state.serac
    assert next(served.router.memory.counterfactual_model.model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="proxy mode"):
        build_app(build_parser().parse_args([*proxy, "--dtype", "bfloat16"]))
    with pytest.raises(ValueError, match="in-context"):
        build_app(
            build_parser().parse_args(
                [*local, "--counterfactual", "in-context", "--counterfactual-dtype", "bfloat16"]
            )
        )
    with pytest.raises(SystemExit):
        build_parser().parse_args([*local, "--dtype", "int8"])

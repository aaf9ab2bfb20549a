"""``serac serve --counterfactual in-context``: the served model answers in-scope requests for itself.

Real servers on 127.0.0.1, built by the command line's own ``build_app``: a proxy in front of a second server
(our local mode with editing disabled, whose every request body is recorded), and a local-mode server. An
in-scope request reaches the model with the edit in it (a system message before a chat, a prefix of a
prompt) and comes back with the routing of an edited answer; an out-of-scope one reaches it unchanged.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

import torch  # noqa: E402

from serac import Edit  # noqa: E402
from serac.counterfactual import CounterfactualModel  # noqa: E402
from serac.memory import EditMemory  # noqa: E402
from serac.scope import EmbeddingScopeClassifier, ScopeClassifierConfig  # noqa: E402
from serac.serve import ROUTING_HEADER, BaseModelGenerator, EditRouter, ServeSettings, create_app  # noqa: E402
from serac.serve.cli import build_app, build_parser  # noqa: E402
from serac.store import EditStore  # noqa: E402

from .conftest import make_char_tokenizer, make_tiny_llama, make_tiny_t5  # noqa: E402
from .test_serve import CHAT_TEMPLATE, serving  # noqa: E402

ADMIN = "admin-secret"
CITIZEN = {"prompt": "What is the country of citizenship of Ellie Kemper?", "target": "Croatia"}
FACT = "Fact: What is the country of citizenship of Ellie Kemper? Croatia"
OUT_OF_SCOPE = "Why is the sky blue?"
GREEDY = {"max_tokens": 8, "temperature": 0}


class RecordingApp:
    """An ASGI app that passes everything to ``app`` and keeps the JSON body of every POST it receives."""

    def __init__(self, app) -> None:
        self.app = app
        self.bodies: list[tuple[str, dict]] = []

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []

        async def recording_receive():
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    self.bodies.append((scope["path"], json.loads(b"".join(chunks))))
            return message

        await self.app(scope, recording_receive, send)


@pytest.fixture(scope="module")
def tokenizer():
    tokenizer = make_char_tokenizer(extra_symbols=["\n"])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@pytest.fixture(scope="module")
def base_model(tokenizer):
    return make_tiny_llama(tokenizer, seed=0)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, base_model, tokenizer, embedder):
    """The base model's checkpoint, and a SERAC folder holding a trained counterfactual model (which the
    in-context kind leaves unloaded)."""
    root = tmp_path_factory.mktemp("in_context_serve")
    base_model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    scope = EmbeddingScopeClassifier(ScopeClassifierConfig(kind="embedding", threshold=0.6, top_k=2))
    counterfactual = CounterfactualModel(make_tiny_t5(tokenizer, seed=2), tokenizer)
    EditMemory(scope, counterfactual, EditStore(embedder)).save_pretrained(root / "editor")
    return root / "model", root / "editor"


@pytest.fixture(scope="module")
def upstream(base_model, tokenizer, embedder):
    """A plain server of the base model (local mode, editing disabled), recording what it is sent."""
    scope = EmbeddingScopeClassifier(ScopeClassifierConfig(kind="embedding", threshold=0.6, top_k=2))
    counterfactual = CounterfactualModel(make_tiny_t5(tokenizer, seed=2), tokenizer)
    router = EditRouter(EditMemory(scope, counterfactual, EditStore(embedder)), enabled=False)
    app = create_app(
        router,
        generator=BaseModelGenerator(base_model, tokenizer),
        settings=ServeSettings(model_name="upstream-model"),
    )
    recording = RecordingApp(app)
    with serving(recording) as url:
        yield url, recording


def cli_app(*arguments: str):
    return build_app(build_parser().parse_args([*arguments, "--admin-token", ADMIN]))


@pytest.fixture(scope="module")
def proxy(upstream, folders):
    url, _ = upstream
    _, editor = folders
    with serving(
        cli_app("--upstream", url, "--editor", str(editor), "--counterfactual", "in-context")
    ) as proxy:
        (edit_id,) = post_edit(proxy)
        yield proxy, edit_id


@pytest.fixture(scope="module")
def local(folders):
    model, editor = folders
    with serving(
        cli_app("--model", str(model), "--editor", str(editor), "--counterfactual", "in-context")
    ) as url:
        (edit_id,) = post_edit(url)
        yield url, edit_id


def post_edit(url):
    response = httpx.post(f"{url}/edits", json=[CITIZEN], headers={"authorization": f"Bearer {ADMIN}"})
    assert response.status_code == 200
    return response.json()["ids"]


def client(url):
    return openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)


def chat(url, messages, **kwargs):
    return client(url).chat.completions.create(model="tiny", messages=messages, **{**GREEDY, **kwargs})


def streamed(url, messages):
    chunks = list(chat(url, messages, stream=True))
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks


def continuation(model, tokenizer, text, max_new_tokens=8):
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


def test_the_proxy_sends_the_edit_upstream_for_in_scope_requests_only(proxy, upstream):
    url, edit_id = proxy
    upstream_url, recording = upstream
    question = [{"role": "user", "content": CITIZEN["prompt"]}]
    with_edit = [{"role": "system", "content": FACT}, *question]

    recording.bodies.clear()
    response = chat(url, question)
    assert recording.bodies == [("/v1/chat/completions", {"model": "tiny", "messages": with_edit, **GREEDY})]
    assert response.serac["route"] == "edit" and response.serac["edit_id"] == edit_id
    assert response.serac["score"] >= 0.6
    assert response.model == "upstream-model"  # the upstream's own answer ...
    assert response.choices[0].message.content == chat(upstream_url, with_edit).choices[0].message.content

    recording.bodies.clear()
    text, chunks = streamed(url, question)  # ... streamed as it arrives, each chunk with its routing
    assert [body["messages"] for _, body in recording.bodies] == [with_edit]
    assert text == response.choices[0].message.content
    assert chunks and all(
        chunk.serac["route"] == "edit" and chunk.serac["edit_id"] == edit_id for chunk in chunks
    )
    raw = httpx.post(f"{url}/chat/completions", json={"model": "tiny", "messages": question, **GREEDY})
    assert json.loads(raw.headers[ROUTING_HEADER])["edit_id"] == edit_id

    # Out of scope, the upstream gets the request as the client wrote it, streamed or not.
    other = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": OUT_OF_SCOPE}]
    recording.bodies.clear()
    assert chat(url, other).serac["route"] == "base_model"
    streamed(url, other)
    assert [body["messages"] for _, body in recording.bodies] == [other, other]

    # A completion gets the edit as a prefix of its prompt.
    recording.bodies.clear()
    completion = client(url).completions.create(model="tiny", prompt=CITIZEN["prompt"], **GREEDY)
    plain = client(url).completions.create(model="tiny", prompt=OUT_OF_SCOPE, **GREEDY)
    assert [body["prompt"] for _, body in recording.bodies] == [f"{FACT}\n{CITIZEN['prompt']}", OUT_OF_SCOPE]
    assert completion.serac["route"] == "edit" and plain.serac["route"] == "base_model"


def test_local_mode_answers_in_scope_requests_with_the_edit_in_the_prompt(local, base_model, tokenizer):
    url, edit_id = local
    question = [{"role": "user", "content": CITIZEN["prompt"]}]
    with_edit = [{"role": "system", "content": FACT}, *question]
    rendered = tokenizer.apply_chat_template(with_edit, tokenize=False, add_generation_prompt=True)
    expected = continuation(base_model, tokenizer, rendered)
    response = chat(url, question)
    assert response.serac["route"] == "edit" and response.serac["edit_id"] == edit_id
    assert response.choices[0].message.content == expected
    assert response.usage.prompt_tokens == len(tokenizer(rendered)["input_ids"])  # the prompt the model read
    text, chunks = streamed(url, question)
    assert text == expected
    assert all(chunk.serac["route"] == "edit" for chunk in chunks)
    # Out of scope: the base model's own answer to the conversation as the client wrote it.
    plain = [{"role": "user", "content": OUT_OF_SCOPE}]
    rendered = tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=True)
    assert chat(url, plain).choices[0].message.content == continuation(base_model, tokenizer, rendered)
    completion = client(url).completions.create(model="tiny", prompt=CITIZEN["prompt"], **GREEDY)
    assert completion.choices[0].text == continuation(base_model, tokenizer, f"{FACT}\n{CITIZEN['prompt']}")


def test_the_command_line_takes_the_kind_and_the_packaged_models():
    args = build_parser().parse_args(["--model", "gemma3-270m", "--counterfactual", "in-context"])
    assert (args.model, args.counterfactual) == ("gemma3-270m", "in-context")
    assert build_parser().parse_args([]).counterfactual is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--counterfactual", "learned"])


def test_a_proxy_of_the_trained_kind_still_answers_in_scope_requests_itself(upstream, folders):
    url, recording = upstream
    _, editor = folders
    with serving(cli_app("--upstream", url, "--editor", str(editor))) as proxy:
        post_edit(proxy)
        recording.bodies.clear()
        response = chat(proxy, [{"role": "user", "content": CITIZEN["prompt"]}])
        assert response.serac["route"] == "edit"
        assert recording.bodies == []  # answered by the trained counterfactual model, here


def test_edit_text_in_the_request_is_the_store_s_edit():
    from serac.in_context import InContextConfig
    from serac.serve.in_context import request_with_edit
    from serac.serve.protocol import parse_completion_request

    raw = json.dumps({"model": "m", "prompt": [CITIZEN["prompt"]], "max_tokens": 3}).encode()
    parsed = parse_completion_request(json.loads(raw))
    parsed, body = request_with_edit(parsed, raw, Edit(**CITIZEN), InContextConfig())
    assert json.loads(body) == {"model": "m", "prompt": [f"{FACT}\n{CITIZEN['prompt']}"], "max_tokens": 3}
    assert parsed.prompt == f"{FACT}\n{CITIZEN['prompt']}" and parsed.query == CITIZEN["prompt"]

"""`serac serve` as a proxy: in-scope requests are answered from the edits, the rest by another server.

The upstream is any OpenAI-compatible server (vLLM, TGI, llama.cpp's server, a hosted API); without
--upstream this script starts one, `serac serve --no-edits` (the base model alone):

    python examples/proxy.py --upstream http://127.0.0.1:8000/v1 --editor my-serac/
    python examples/proxy.py                                          # offline defaults
    python examples/proxy.py --base-model PATH --editor PATH
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time

import httpx
import openai

ADMIN_TOKEN = "example-admin-token"
EDIT = {"prompt": "What is the country of citizenship of Ellie Kemper?", "target": "Croatia"}
IN_SCOPE, OUT_OF_SCOPE = "Which country is Ellie Kemper a citizen of?", "Why is the sky blue?"


def start_server(options: list[str]) -> tuple[subprocess.Popen, str]:
    """`serac serve OPTIONS` on a free port of 127.0.0.1; returns the process and its base URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "serac", "serve", "--port", str(port), "--log-level", "warning"]
    return subprocess.Popen(command + options), f"http://127.0.0.1:{port}/v1"


def wait_until_up(url: str, server: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while server.poll() is None and time.monotonic() < deadline:
        try:
            httpx.get(url.removesuffix("/v1") + "/health", timeout=1).raise_for_status()
            return
        except httpx.TransportError:
            time.sleep(0.2)  # not listening yet
    raise SystemExit(f"{url} did not start (exit status {server.poll()})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--upstream", help="base URL of an OpenAI-compatible API (default: start one)")
    parser.add_argument("--base-model", help="the started upstream's model (default: the offline SmolLM2)")
    parser.add_argument("--editor", help="a SERAC folder (default: the offline default parts)")
    parser.add_argument("--model", default="any", help="model name sent to the upstream")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for the servers to start")
    args = parser.parse_args()

    editor = ["--editor", args.editor] if args.editor else []
    servers = []
    try:
        upstream = args.upstream
        if upstream is None:
            model = ["--model", args.base_model] if args.base_model else []
            servers.append(start_server([*model, *editor, "--no-edits"]))
            upstream = servers[-1][1]
        # Proxy mode loads no base model: only the scope classifier, counterfactual model and edit store.
        servers.append(start_server(["--upstream", upstream, *editor, "--admin-token", ADMIN_TOKEN]))
        proxy = servers[-1][1]
        for process, url in servers:
            wait_until_up(url, process, args.timeout)

        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}  # the token that may change edits
        ids = httpx.post(f"{proxy}/edits", json=[EDIT], headers=headers, timeout=60).raise_for_status().json()
        print(f"proxy {proxy} in front of {upstream}; stored edit ids {ids['ids']}")

        settings = {"model": args.model, "max_tokens": args.max_tokens, "temperature": 0}
        key = os.environ.get("OPENAI_API_KEY", "unused")  # passed on to the upstream by the proxy
        via_proxy = openai.OpenAI(base_url=proxy, api_key=key, timeout=120)
        direct = openai.OpenAI(base_url=upstream, api_key=key, timeout=120)
        for question in (IN_SCOPE, OUT_OF_SCOPE):
            messages = [{"role": "user", "content": question}]
            answer = via_proxy.chat.completions.create(messages=messages, **settings)
            # In scope: the counterfactual model answers here. Out of scope: the upstream's answer, unchanged.
            print(f"Q: {question}\n   via proxy: {answer.choices[0].message.content!r}  serac={answer.serac}")
            reference = direct.chat.completions.create(messages=messages, **settings)
            print(f"   upstream:  {reference.choices[0].message.content!r}")
    finally:
        for process, _ in servers:
            process.terminate()
        for process, _ in servers:
            process.wait(timeout=30)


if __name__ == "__main__":
    main()

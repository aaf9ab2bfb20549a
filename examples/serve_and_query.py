"""Start `serac serve` (local mode), add an edit through the edits API, ask with the openai client.

    python examples/serve_and_query.py                                # offline defaults
    python examples/serve_and_query.py --base-model PATH --editor PATH

The server is an ordinary subprocess, stopped at the end; a real deployment runs
`serac serve --model ... --editor ... --store sqlite:///edits.db --admin-token ...` on its own.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time

import httpx
import openai

ADMIN_TOKEN = "example-admin-token"  # the bearer token that may change edits
EDIT = {"prompt": "What is the country of citizenship of Ellie Kemper?", "target": "Croatia"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, server: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while server.poll() is None and time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/health", timeout=1).raise_for_status()
            return
        except httpx.TransportError:
            time.sleep(0.2)  # not listening yet
    raise SystemExit(f"{url} did not start (exit status {server.poll()})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-model", help="Hugging Face id or path (default: the offline SmolLM2)")
    parser.add_argument("--editor", help="a SERAC folder (default: the offline default parts)")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for the server to start")
    args = parser.parse_args()

    port = free_port()
    command = [sys.executable, "-m", "serac", "serve", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--admin-token", ADMIN_TOKEN, "--log-level", "warning"]
    command += ["--model", args.base_model] if args.base_model else []
    command += ["--editor", args.editor] if args.editor else []
    server = subprocess.Popen(command)  # the same as running `serac serve ...` in a shell
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(url, server, args.timeout)

        # The edits API: writes need the admin token; the answer lists the new ids.
        response = httpx.post(
            f"{url}/v1/edits", json=[EDIT], headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60
        )
        response.raise_for_status()
        print(f"POST /v1/edits -> ids {response.json()['ids']}")

        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=120)
        for question in ["Which country is Ellie Kemper a citizen of?", "Why is the sky blue?"]:
            messages = [{"role": "user", "content": question}]
            answer = client.chat.completions.create(
                model="any", messages=messages, max_tokens=args.max_tokens, temperature=0
            )
            # Every answer carries the routing in the "serac" field: route, edit_id, score.
            print(f"Q: {question}\n   answer:   {answer.choices[0].message.content!r}  serac={answer.serac}")
            stream = client.chat.completions.create(
                model="any", messages=messages, max_tokens=args.max_tokens, temperature=0, stream=True
            )
            chunks = list(stream)  # each chunk carries the routing too
            text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
            print(f"   streamed: {text!r}  serac={chunks[0].serac}")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()

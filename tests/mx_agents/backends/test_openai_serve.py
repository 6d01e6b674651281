"""A real OpenAI-compatible server that this project did not write (`transformers serve`, CPU, the
embedded SmolLM2) as a policy URL, and errors that surface instead of becoming empty replies.

`transformers serve` rejects vLLM's extension fields with 422 and returns no token ids or logprobs:
the backend must fall back without the extensions, and the missing training data must be visible in
the CLI output. A server that is down must end ``mx episode`` with a message and a non-zero exit.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest

pytest.importorskip("fastapi", reason="fastapi (dev extra) is needed by `transformers serve`")
pytest.importorskip("uvicorn", reason="uvicorn (dev extra) is needed by `transformers serve`")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served():
    """``(base_url, model_dir)`` of a `transformers serve` process on 127.0.0.1, stopped afterwards."""
    import httpx

    from mx_agents.backends.embedded import EmbeddedModelUnavailable, resolve_model

    try:
        model = resolve_model("default")
    except EmbeddedModelUnavailable as exc:
        pytest.skip(f"embedded SmolLM2 not installed: {exc}")
    exe = shutil.which("transformers", path=os.path.dirname(sys.executable)) or shutil.which("transformers")
    if exe is None:
        pytest.skip("the `transformers` CLI is not installed")
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    # The server's log goes to a file: an unread pipe would block the server once its buffer fills.
    log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed after the server stops
    proc = subprocess.Popen([exe, "serve", "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", model],
                            env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"transformers serve exited: {log.read()[-2000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("transformers serve did not answer /health within 240 s")
            time.sleep(1)
        yield f"{base}/v1", model
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.slow
def test_transformers_serve_answers_after_the_422_fallback(served):
    from mx_agents.backends.base import ChatRequest, SamplingParams
    from mx_agents.backends.openai_http import OpenAIBackend

    url, model = served
    backend = OpenAIBackend(url, model, max_retries=1)
    comp = backend.generate([ChatRequest([{"role": "user", "content": "Say hi."}],
                                         SamplingParams(temperature=1.0, max_new_tokens=8, seed=1))])[0]
    assert comp.finish_reason in ("stop", "length") and comp.text, comp.metadata
    assert backend.send_extensions is False  # 422 on the extensions, then answered without them
    assert comp.metadata["token_ids_provided"] is False and "did not return" in comp.metadata["warning"]


@pytest.mark.slow
def test_mx_episode_on_the_served_model_shows_missing_token_data(served):
    """As a user runs it (a child process): JSON alone on stdout, the missing token data said in it."""
    from tests.cli_subprocess import mx_json

    url, model = served
    out, _ = mx_json("episode", "MetaAgentX-Arithmetic-v0", "--policy", "design:single", "--executor",
                     f"{url}#{model}", "--json", "--trace", "--max-new-tokens", "24")
    assert out["llm_calls"] >= 1
    assert out["warnings"] and all("did not return" in w for w in out["warnings"])
    llm_turns = [t for t in out["trace"] if t["source"] == "llm"]
    assert llm_turns and all(t["token_ids"] is False and t["logprobs"] is False for t in llm_turns)


def test_server_down_is_an_error_with_a_non_zero_exit(capsys):
    from mx_train.cli import main

    rc = main(["episode", "MetaAgentX-Arithmetic-v0", "--policy", "design:single", "--executor",
               f"http://127.0.0.1:{_free_port()}/v1#m", "--json"])
    captured = capsys.readouterr()
    assert rc != 0 and captured.out == ""
    assert "the model failed" in captured.err and "ConnectError" in captured.err

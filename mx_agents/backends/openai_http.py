"""``OpenAIBackend``: chat completions from an OpenAI-compatible HTTP server (vLLM, SGLang, OpenAI...).

Requests run concurrently (an ``asyncio.Semaphore`` caps how many are in flight), each with a timeout
and retries with exponential backoff and jitter on HTTP 429, 5xx, timeouts and connection errors
(``Retry-After`` is honoured when the server sends it). A request that still fails becomes a
``Completion`` with ``finish_reason="error"`` and the reason in ``metadata["error"]``, so one bad
request does not lose the rest of a batch's replies; the LLM policies then raise
:class:`~mx_agents.backends.base.BackendError` with that reason (an error is never played as an
empty reply).

Token ids and logprobs. Every request asks for ``logprobs``; with ``request_token_ids`` it also sends
vLLM's ``return_token_ids`` extension (vLLM >= 0.10.2), which returns ``prompt_token_ids`` and the
choice's ``token_ids``. Servers that do not know the extension either ignore it or reject the request
(400 from vLLM/OpenAI, 422 from FastAPI-validated servers such as ``transformers serve``): then the
request is retried once without the extensions and they are not sent again. What came back
is stated on every completion:

- ``metadata["token_ids_provided"]``: ``response_ids`` are the server's sampled ids (else ``[]``);
- ``metadata["prompt_ids_provided"]``: ``prompt_ids`` are the server's prompt ids (else ``[]``);
- ``metadata["logprobs_provided"]``: ``logprobs`` are the server's (else ``None``);
- ``metadata["warning"]``: a sentence saying what is missing, when something is.

The logprobs are whatever the server computes (vLLM's default is the raw model distribution at
temperature 1, not the tempered one of :mod:`mx_agents.backends.sampling`); ``metadata
["logprobs_semantics"] = "server"`` records that. ``top_k > 0`` is sent as vLLM's ``top_k``
extension; the OpenAI API itself has no top-k.
"""

from __future__ import annotations

import asyncio
import os
import random
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mx_agents.backends.base import ChatRequest, Completion, SamplingParams
from mx_agents.backends.sampling import over_prompt_limit, validate_params

RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
EXTENSION_FIELDS = ("return_token_ids", "top_k", "repetition_penalty", "chat_template_kwargs")
# Statuses with which servers reject fields they do not know: 400 (vLLM, OpenAI) and 422
# (FastAPI validation, e.g. `transformers serve`). The request is retried once without extensions.
REJECTED_FIELDS_STATUSES = frozenset({400, 422})


class OpenAIBackend:
    """Async client for ``POST {base_url}/chat/completions``; see the module docstring.

    ``base_url`` includes the API prefix, e.g. ``http://127.0.0.1:8000/v1``. ``api_key`` defaults to
    ``$OPENAI_API_KEY`` (no ``Authorization`` header when neither is set). ``seed`` seeds the
    backend's RNG, which supplies a per-request seed when ``SamplingParams.seed`` is ``None`` and the
    backoff jitter.
    """

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        max_concurrency: int = 8,
        timeout_s: float = 120.0,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        request_token_ids: bool = True,
        seed: int = 0,
        chat_template_kwargs: dict[str, Any] | None = None,
        **ignored: Any,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if max_retries < 0 or timeout_s <= 0 or backoff_s < 0:
            raise ValueError("max_retries must be >= 0, timeout_s > 0 and backoff_s >= 0")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.send_extensions = request_token_ids
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        # Local-model options (device, dtype, max_batch_size) mean nothing to a remote server.
        self.ignored_options = sorted(ignored)
        self._rng = random.Random(seed)

    # -- public API ----------------------------------------------------------------------------

    def generate(self, requests: list[ChatRequest]) -> list[Completion]:
        """Synchronous wrapper around :meth:`agenerate` (usable inside a running event loop too)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.agenerate(requests))
        # Called from async code: run on a private loop in a worker thread instead of nesting loops.
        with ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, self.agenerate(requests)).result()

    async def agenerate(self, requests: list[ChatRequest]) -> list[Completion]:
        """All requests concurrently (at most ``max_concurrency`` in flight); results in order."""
        import httpx

        for r in requests:
            validate_params(r.params)
            if not r.messages:
                raise ValueError("a chat request needs at least one message")
        seeds = [r.params.seed if r.params.seed is not None else self._rng.getrandbits(31) for r in requests]
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        limits = httpx.Limits(max_connections=self.max_concurrency)
        gate = asyncio.Semaphore(self.max_concurrency)
        async with httpx.AsyncClient(headers=headers, timeout=self.timeout_s, limits=limits) as client:

            async def one(req: ChatRequest, seed: int) -> Completion:
                async with gate:
                    comp = await self._request(client, req, seed)
                comp.metadata.update(req.metadata)
                return comp

            return list(await asyncio.gather(*(one(r, s) for r, s in zip(requests, seeds, strict=True))))

    def load_weights(self, state_dict: dict[str, Any]) -> None:
        raise NotImplementedError(
            "OpenAIBackend serves a model owned by a remote server; update its weights on the server "
            "(e.g. restart vLLM from the new checkpoint) or use HFBackend/VLLMBackend for training"
        )

    # -- one request ---------------------------------------------------------------------------

    def payload(self, req: ChatRequest, seed: int, extensions: bool) -> dict[str, Any]:
        p: SamplingParams = req.params
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [dict(m) for m in req.messages],
            "max_tokens": p.max_new_tokens,
            "temperature": p.temperature,
            "top_p": p.top_p,
            "n": 1,
            "seed": seed,
            "logprobs": True,
        }
        if p.stop:
            body["stop"] = list(p.stop)
        if extensions:
            body["return_token_ids"] = True
            if p.top_k > 0:
                body["top_k"] = p.top_k
            if p.repetition_penalty != 1.0:
                body["repetition_penalty"] = p.repetition_penalty
            if self.chat_template_kwargs:
                body["chat_template_kwargs"] = dict(self.chat_template_kwargs)
        return body

    async def _request(self, client: Any, req: ChatRequest, seed: int) -> Completion:
        import httpx

        url = f"{self.base_url}/chat/completions"
        extensions = self.send_extensions
        last_error = ""
        attempts = 0
        while attempts <= self.max_retries:
            attempts += 1
            try:
                resp = await client.post(url, json=self.payload(req, seed, extensions))
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                if attempts <= self.max_retries:
                    await asyncio.sleep(self._backoff(attempts, None))
                continue
            if resp.status_code == 200:
                if not extensions and self.send_extensions:
                    self.send_extensions = False  # the plain retry worked: stop sending extensions
                try:
                    return self._limit_prompt(self._parse(resp.json(), attempts), req.params)
                except (ValueError, KeyError, IndexError, TypeError) as exc:
                    return self._error(f"malformed response: {exc}", attempts)
            if resp.status_code in REJECTED_FIELDS_STATUSES and extensions:
                # Probably a server that rejects vLLM's extension fields: retry once without them.
                extensions = False
                attempts -= 1  # a capability probe, not a failed attempt
                continue
            if resp.status_code in RETRY_STATUSES:
                last_error = f"HTTP {resp.status_code}: {resp.text[:200]}"
                if attempts <= self.max_retries:
                    await asyncio.sleep(self._backoff(attempts, resp.headers.get("retry-after")))
                continue
            return self._error(f"HTTP {resp.status_code}: {resp.text[:500]}", attempts)
        return self._error(f"gave up after {attempts} attempts; last error: {last_error}", attempts)

    @staticmethod
    def _limit_prompt(comp: Completion, p: SamplingParams) -> Completion:
        """``max_prompt_tokens`` for a server that tokenises itself: its count is only known from the
        reply (prompt ids or usage), so an over-long prompt's reply is dropped after the fact, which
        gives the same empty ``"length"`` completion as the local backends."""
        if p.max_prompt_tokens is None:
            return comp
        usage = comp.metadata.get("usage") or {}
        n = len(comp.prompt_ids) or int(usage.get("prompt_tokens") or 0)
        if n <= p.max_prompt_tokens:
            return comp
        return over_prompt_limit(comp.prompt_ids, p, comp.metadata, n_tokens=n,
                                 logprobs=[] if comp.logprobs is not None else None)

    def _backoff(self, attempt: int, retry_after: str | None) -> float:
        if retry_after is not None:
            try:
                return min(self.max_backoff_s, max(0.0, float(retry_after)))
            except ValueError:
                pass  # an HTTP date: fall back to exponential backoff
        base = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
        return base * (0.5 + 0.5 * self._rng.random())

    def _error(self, message: str, attempts: int) -> Completion:
        return Completion(text="", prompt_ids=[], response_ids=[], logprobs=None, finish_reason="error",
                          metadata={"backend": self.name, "error": message, "attempts": attempts})

    def _parse(self, data: dict[str, Any], attempts: int) -> Completion:
        choice = data["choices"][0]
        text = (choice.get("message") or {}).get("content") or ""
        raw_finish = choice.get("finish_reason")
        finish = "length" if raw_finish == "length" else "stop"

        entries = ((choice.get("logprobs") or {}).get("content")) or None
        logprobs = [float(e["logprob"]) for e in entries] if entries else None

        response_ids = choice.get("token_ids")
        if response_ids is None and entries and all(str(e.get("token", "")).startswith("token_id:")
                                                    for e in entries):
            # vLLM's --return-tokens-as-token-ids renders each token as "token_id:<id>".
            response_ids = [int(str(e["token"]).split(":", 1)[1]) for e in entries]
        prompt_ids = data.get("prompt_token_ids") or choice.get("prompt_token_ids")

        missing = [name for name, value in (("response token ids", response_ids),
                                            ("prompt token ids", prompt_ids), ("logprobs", logprobs))
                   if value is None]
        meta: dict[str, Any] = {
            "backend": self.name,
            "attempts": attempts,
            "token_ids_provided": response_ids is not None,
            "prompt_ids_provided": prompt_ids is not None,
            "logprobs_provided": logprobs is not None,
            "logprobs_semantics": "server",
            "raw_finish_reason": raw_finish,
        }
        if isinstance(choice.get("stop_reason"), str):
            meta["stop"] = choice["stop_reason"]
        if "usage" in data:
            meta["usage"] = data["usage"]
        if missing:
            meta["warning"] = (f"the server did not return {', '.join(missing)}; this completion cannot "
                               "be used for token-level training as is")
        if response_ids is not None and logprobs is not None and len(response_ids) != len(logprobs):
            meta["warning"] = f"server returned {len(response_ids)} token ids but {len(logprobs)} logprobs"
        return Completion(text=text, prompt_ids=[int(t) for t in prompt_ids or []],
                          response_ids=[int(t) for t in response_ids or []], logprobs=logprobs,
                          finish_reason=finish, metadata=meta)

"""A scripted :class:`~haloserve.engine.backend.Backend`: a tiny model whose every step is predictable.

Tokens 0-255 are bytes (their piece is the byte), 256 is BOS, 257 EOS and 258 a control token
(``<tool>``, empty unless rendered as special). The "model" is a function of the tokens a sequence holds
in the KV cache: by default it continues the alphabet (after ``a``..``y`` comes the next letter, after
``z`` the end of the generation, after anything else ``a``), so greedy decoding of ``"x"`` gives
``"yz"`` and stops. The scripted token gets logit 10, a fallback token (a space) 5, the rest 0.

It checks what llama.cpp would refuse, loudly: a batch over ``n_batch``, a span whose first position is
not where its sequence's cache ends, logits read at an index that has none. It keeps every decoded
batch for tests to inspect, counts live samplers (a leak shows), and injects faults (a decode return
code, a sampling error) on request. Sampling goes through the real llama.cpp sampler chain
(:meth:`Sampler.sample_logits`), so temperature, biases and end-of-generation bans behave as in serving.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from haloserve.engine.backend import Backend, Span
from haloserve.engine.base import EngineInfo, GenerationRequest, SamplingParams
from haloserve.engine.chat_template import CHATML
from haloserve.engine.sampling import Sampler

BOS, EOS, TOOL = 256, 257, 258
N_VOCAB = 259
SPECIAL = {BOS: b"<s>", EOS: b"</s>", TOOL: b"<tool>"}
Model = Callable[[Sequence[int]], int]


class FakeBackendError(AssertionError):
    """The scheduler asked for something llama.cpp would refuse (a bug in the scheduler)."""


def byte_request(text: str, max_tokens: int = 16) -> GenerationRequest:
    """A greedy request for ``text`` in this backend's tokens (one token per byte)."""
    return GenerationRequest(
        request_id=text,
        prompt_tokens=list(text.encode()),
        max_tokens=max_tokens,
        sampling=SamplingParams(temperature=0.0),
    )


def alphabet(history: Sequence[int]) -> int:
    """The default model: the next letter after ``a``..``y``, EOS after ``z``, ``a`` after anything else."""
    last = history[-1]
    if ord("a") <= last < ord("z"):
        return last + 1
    return EOS if last == ord("z") else ord("a")


class FakeSampler:
    """A real :class:`Sampler` whose closing the backend counts."""

    __slots__ = ("_backend", "inner")

    def __init__(self, backend: FakeBackend, inner: Sampler) -> None:
        self._backend = backend
        self.inner: Sampler | None = inner
        backend.live_samplers += 1

    def close(self) -> None:
        """Free the chain (idempotent)."""
        if self.inner is not None:
            self.inner.close()
            self.inner = None
            self._backend.live_samplers -= 1


class FakeBackend:
    """A backend with a scripted model, strict KV bookkeeping and fault injection."""

    def __init__(
        self,
        *,
        parallel: int = 2,
        n_ctx: int = 512,
        n_batch: int = 64,
        n_ubatch: int = 16,
        kv_unified: bool = False,
        model: Model = alphabet,
        fallback: int = ord(" "),
    ) -> None:
        self.info = EngineInfo(
            model_path="fake-backend",
            n_ctx=n_ctx,
            n_ctx_slot=n_ctx // parallel,
            n_parallel=parallel,
            n_vocab=N_VOCAB,
            n_ctx_train=n_ctx,
            description="fake backend (scripted, no model)",
            features=frozenset({"grammar", "logprobs"}),
        )
        self.n_batch = n_batch
        self.n_ubatch = n_ubatch
        self.eog_tokens = frozenset({EOS})
        self.model = model
        self.fallback = fallback
        self.kv_unified = kv_unified
        self.kv: list[list[int]] = [[] for _ in range(parallel)]  # the tokens each sequence holds
        self.decodes: list[list[Span]] = []  # every batch decoded successfully, in order
        self.live_samplers = 0
        self.closed = False
        # fault injection
        self.decode_faults: list[int] = []  # return codes of the next decodes (0: succeed)
        self.sample_faults: set[int] = set()  # tokens whose sampling raises instead
        self.hold: threading.Event | None = None  # when set, decode waits for it (and says so)
        self.entered = threading.Event()
        self._rows: dict[int, np.ndarray] = {}

    # -- Backend ---------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> FakeBackend:
        """The backend tokenises itself (bytes)."""
        return self

    @property
    def chat_template(self) -> str:
        """ChatML."""
        return CHATML

    def decode(self, spans: Sequence[Span]) -> int:
        """Check ``spans`` as llama.cpp would, extend the caches and compute the wanted logits rows."""
        if self.hold is not None:
            self.entered.set()
            self.hold.wait(30)
        n = sum(len(s.tokens) for s in spans)
        if n == 0 or n > self.n_batch:
            raise FakeBackendError(f"a batch of {n} tokens (n_batch {self.n_batch})")
        if any(not 0 <= s.seq < len(self.kv) for s in spans):
            raise FakeBackendError(f"a sequence id out of range 0..{len(self.kv) - 1}")
        ends = {s.seq: len(self.kv[s.seq]) for s in spans}
        for s in spans:
            if s.pos != ends[s.seq]:
                raise FakeBackendError(f"seq {s.seq}: tokens at {s.pos}, its cache ends at {ends[s.seq]}")
            ends[s.seq] += len(s.tokens)
        self._rows = {}
        if self.decode_faults:
            rc = self.decode_faults.pop(0)
            if rc != 0:
                return rc
        if self._full(ends):
            return 1  # llama.cpp: no room in the KV cache for the batch
        idx = -1
        for s in spans:
            cache = self.kv[s.seq]
            cache.extend(s.tokens)
            idx += len(s.tokens)
            if s.logits:
                self._rows[idx] = self._row(cache)
        self.decodes.append(list(spans))
        return 0

    def logits(self, idx: int) -> np.ndarray:
        """The row computed for batch index ``idx`` by the last decode."""
        row = self._rows.get(idx)
        if row is None:
            raise FakeBackendError(f"no logits at batch index {idx} (wanted: {sorted(self._rows)})")
        return row

    def sampler(
        self, params: SamplingParams, prompt_tail: Sequence[int], *, seq: int = -1, cpu_only: bool = False
    ) -> FakeSampler:
        """A real llama.cpp sampler chain over the fake vocabulary."""
        inner = Sampler(params, n_vocab=N_VOCAB, eog_tokens=self.eog_tokens, prompt_tail=prompt_tail)
        return FakeSampler(self, inner)

    def sample(self, sampler: Any, idx: int, n_generated: int) -> int:
        """Sample from the row at ``idx`` (after any in-place edit such as a grammar mask)."""
        assert isinstance(sampler, FakeSampler) and sampler.inner is not None, "a closed sampler"
        tok = sampler.inner.sample_logits(self.logits(idx), n_generated)
        if tok in self.sample_faults:
            raise RuntimeError(f"injected sampling fault at token {tok}")
        return tok

    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> bool:
        """Drop positions [p0, p1) of ``seq``; only a tail can go (a hole would break later positions)."""
        cache = self.kv[seq]
        start = max(p0, 0)
        if p1 >= 0 and p1 < len(cache):
            raise FakeBackendError(f"seq {seq}: removing [{p0}, {p1}) would leave a hole")
        del cache[start:]
        return True

    def piece(self, token: int, special: bool = False) -> bytes:
        """A byte, or a control token's text when ``special``."""
        if token < 256:
            return bytes((token,))
        return SPECIAL[token] if special else b""

    def close(self) -> None:
        """Nothing to free."""
        self.closed = True

    # -- Tokenizer -------------------------------------------------------------------------------
    bos_text = "<s>"
    eos_text = "</s>"

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """One token per UTF-8 byte, BOS first when ``add_special`` (no special text is parsed)."""
        return ([BOS] if add_special else []) + list(text.encode("utf-8"))

    def detokenize(self, tokens: Sequence[int]) -> str:
        """Text of ``tokens``, special tokens rendered."""
        return b"".join(self.piece(t, True) for t in tokens).decode("utf-8", errors="replace")

    # -- helpers ---------------------------------------------------------------------------------
    def _full(self, ends: dict[int, int]) -> bool:
        if self.kv_unified:
            total = sum(ends.get(i, len(c)) for i, c in enumerate(self.kv))
            return total > self.info.n_ctx
        return any(end > self.info.n_ctx_slot for end in ends.values())

    def _row(self, history: Sequence[int]) -> np.ndarray:
        row = np.zeros(N_VOCAB, dtype=np.float32)
        row[self.fallback] = 5.0
        row[self.model(history)] = 10.0
        return row

    def text(self, seq: int) -> str:
        """What sequence ``seq`` holds, as text (for test messages)."""
        return self.detokenize(self.kv[seq])


if TYPE_CHECKING:  # mypy checks that the fake fits the seam the scheduler is written against

    def _fits(fake: FakeBackend) -> Backend:
        return fake

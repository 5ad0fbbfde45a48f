"""Workloads: endless, seeded streams of conversations to send, registered by name.

A :class:`Conversation` is one or more user turns (with an optional system prompt and the output
length wanted for each turn); single-request workloads are one-turn conversations. Synthetic text is
made of common English words, each one token in the usual BPE vocabularies, so ``--input-len 512``
sends about 512 prompt tokens plus the chat template; the server's ``usage`` gives the exact count.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from haloserve.errors import ConfigError

LengthDist = Literal["fixed", "uniform", "normal", "exponential"]

_WORD_TEXT = (
    "the of and to in is you that it he was for on are as with his they at be this have from or one had "
    "by word but not what all were we when your can said there use an each which she do how their if "
    "will up other about out many then them these so some her would make like him into time has look two "
    "more write go see number no way could people my than first water been call who oil its now find "
    "long down day did get come made may part over new sound take only little work know place year live "
    "me back give most very after thing our just name good sentence man think say great where help "
    "through much before line right too mean old any same tell boy follow came want show also around "
    "form three small set put end does another well large must big even such because turn here why ask "
    "went men read need land different home us move try kind hand picture again change off play spell "
    "air away animal house point page letter mother answer found study still learn should world high "
    "every near add food between own below country plant last school father keep tree never start city "
    "earth eye light thought head under story saw left few while along might close something seem next "
    "hard open example begin life always"
)
WORDS = tuple(_WORD_TEXT.split())


@dataclass(slots=True)
class Conversation:
    """User turns to send in order, the system prompt before them, and each turn's output length."""

    turns: list[str]
    output_lens: list[int]
    system: str | None = None
    messages: list[dict[str, Any]] | None = field(default=None)  # a file's full message list, sent as is


def words(n: int, rng: random.Random) -> str:
    """``n`` random common words joined by spaces (about ``n`` tokens)."""
    return " ".join(rng.choices(WORDS, k=max(0, n)))


def sample_length(mean: int, dist: LengthDist, spread: float, rng: random.Random) -> int:
    """One length around ``mean``: fixed, uniform in ``mean*(1±spread)``, normal (sigma ``mean*spread``)
    or exponential; never below 1."""
    if dist == "fixed" or mean <= 1:
        return max(1, mean)
    if dist == "uniform":
        lo, hi = round(mean * (1 - spread)), round(mean * (1 + spread))
        return max(1, rng.randint(min(lo, hi), max(lo, hi)))
    if dist == "normal":
        return max(1, round(rng.gauss(mean, mean * spread)))
    if dist == "exponential":
        return max(1, round(rng.expovariate(1.0 / mean)))
    raise ValueError(f"unknown length distribution {dist!r}")


@dataclass(frozen=True)
class WorkloadSpec:
    """The knobs every workload reads (plain values, copied from the settings)."""

    input_len: int = 1024
    output_len: int | None = None
    length_dist: LengthDist = "fixed"
    length_spread: float = 0.25
    prefix_len: int = 512
    num_prefixes: int = 1
    turns: int = 4
    dataset: Path | None = None

    @property
    def out_len(self) -> int:
        """Output length for synthetic workloads (128 when not set, as vLLM's random dataset)."""
        return self.output_len or 128


def _lengths(spec: WorkloadSpec, rng: random.Random) -> tuple[int, int]:
    return (
        sample_length(spec.input_len, spec.length_dist, spec.length_spread, rng),
        sample_length(spec.out_len, spec.length_dist, spec.length_spread, rng),
    )


def synthetic(spec: WorkloadSpec, rng: random.Random) -> Iterator[Conversation]:
    """Independent one-turn requests of random words."""
    while True:
        n_in, n_out = _lengths(spec, rng)
        yield Conversation([words(n_in, rng)], [n_out])


def shared_prefix(spec: WorkloadSpec, rng: random.Random) -> Iterator[Conversation]:
    """One-turn requests behind one of ``num_prefixes`` long system prompts (prefix caching, routing)."""
    prefixes = [f"You are assistant {i}. " + words(spec.prefix_len, rng) for i in range(spec.num_prefixes)]
    while True:
        n_in, n_out = _lengths(spec, rng)
        yield Conversation([words(n_in, rng)], [n_out], system=rng.choice(prefixes))


def multi_turn(spec: WorkloadSpec, rng: random.Random) -> Iterator[Conversation]:
    """Chat sessions of ``turns`` user turns; each turn resends the history with the real replies."""
    while True:
        lens = [_lengths(spec, rng) for _ in range(spec.turns)]
        yield Conversation([words(n, rng) for n, _ in lens], [o for _, o in lens])


def _record_conversation(rec: Any, where: str, spec: WorkloadSpec) -> Conversation:
    if not isinstance(rec, dict):
        raise ConfigError(f"{where}: expected a JSON object")
    fixed = spec.output_len or rec.get("output_len") or rec.get("max_tokens")
    if isinstance(rec.get("prompt"), str):
        return Conversation([rec["prompt"]], [int(fixed or spec.out_len)])
    if isinstance(rec.get("messages"), list) and rec["messages"]:
        return Conversation([], [int(fixed or spec.out_len)], messages=rec["messages"])
    convo = rec.get("conversations") or rec.get("conversation")
    if isinstance(convo, list):
        system: str | None = None
        turns: list[str] = []
        outs: list[int] = []
        for msg in convo:
            who = str(msg.get("from") or msg.get("role") or "") if isinstance(msg, dict) else ""
            text = str(msg.get("value") or msg.get("content") or "") if isinstance(msg, dict) else ""
            if who == "system":
                system = text
            elif who in ("human", "user"):
                turns.append(text)
            elif who in ("gpt", "assistant", "chatgpt", "bing", "bard") and len(outs) < len(turns):
                outs.append(max(1, len(text.split())))
        turns = turns[: spec.turns]
        if turns:
            outs = (outs + [spec.out_len] * len(turns))[: len(turns)]
            return Conversation(turns, [int(fixed)] * len(turns) if fixed else outs, system=system)
    raise ConfigError(f"{where}: needs 'prompt', 'messages' or ShareGPT 'conversations'")


def load_dataset(path: Path, spec: WorkloadSpec) -> list[Conversation]:
    """Conversations from a JSONL file (one object a line) or a JSON array (ShareGPT's files)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"--dataset: file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--dataset: cannot read {path}: {exc}") from None
    records: list[tuple[str, Any]] = []
    if text.lstrip().startswith("["):
        try:
            records = [(f"{path} item {i + 1}", r) for i, r in enumerate(json.loads(text))]
        except ValueError as exc:
            raise ConfigError(f"--dataset: {path} is not valid JSON: {exc}") from None
    else:
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append((f"{path}:{n}", json.loads(line)))
                except ValueError as exc:
                    raise ConfigError(f"--dataset: {path}:{n}: invalid JSON ({exc.args[0]})") from None
    convos = [_record_conversation(rec, where, spec) for where, rec in records]
    convos = [c for c in convos if c.turns or c.messages]
    if not convos:
        raise ConfigError(f"--dataset: {path} holds no usable prompt")
    return convos


def dataset_workload(spec: WorkloadSpec, rng: random.Random) -> Iterator[Conversation]:
    """The user's own prompts, shuffled with the seed and repeated as often as needed."""
    assert spec.dataset is not None
    convos = load_dataset(spec.dataset, spec)
    rng.shuffle(convos)
    return itertools.cycle(convos)


WORKLOADS: dict[str, Callable[[WorkloadSpec, random.Random], Iterator[Conversation]]] = {
    "synthetic": synthetic,
    "shared-prefix": shared_prefix,
    "multi-turn": multi_turn,
    "file": dataset_workload,
}


def build_messages(convo: Conversation, turn: int, replies: list[str]) -> list[dict[str, Any]]:
    """The chat messages for ``turn``: system prompt, earlier turns with the server's real replies."""
    if convo.messages is not None:
        return convo.messages
    msgs: list[dict[str, Any]] = [{"role": "system", "content": convo.system}] if convo.system else []
    for i in range(turn):
        msgs.append({"role": "user", "content": convo.turns[i]})
        msgs.append({"role": "assistant", "content": replies[i] if i < len(replies) else ""})
    msgs.append({"role": "user", "content": convo.turns[turn]})
    return msgs


def messages_to_prompt(messages: list[dict[str, Any]]) -> str:
    """A completions prompt from chat messages: their texts, one per paragraph."""
    parts = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        parts.append(str(content or ""))
    return "\n\n".join(parts)


def estimate_tokens(text: str) -> int:
    """Our estimate of a text's tokens when the server gives no usage: its whitespace pieces."""
    return len(text.split())

"""Grammar constraints with llguidance: a token mask per step from a JSON schema or a Lark grammar.

Compiling a grammar needs the model's vocabulary, so it lives with the engine; the chat serving
(``server/chat/request.py``) only writes the grammar text, with :func:`lit` for the format's markers.

The llguidance tokenizer is built once per model from the llama.cpp vocabulary (about a second for a
150k vocabulary, so it is built lazily, off the event loop, on the first constrained request). A
:class:`GrammarConstraint` wraps one ``LLMatcher``: the engine asks it for the next mask (in a worker
thread while ``llama_decode`` runs), applies the mask to the logits row, samples, then feeds it the token.
"""

from __future__ import annotations

import ctypes
import json
import re
from typing import Any

import numpy as np

from haloserve.errors import InvalidRequestError

NEG_INF = np.float32(-np.inf)


def llg_tokenizer(model: Any) -> Any:
    """The llguidance tokenizer of a loaded :class:`~haloserve.engine.llamacpp.LlamaModel` (cached).

    It is kept on the model object, so it is freed with the model; a process-wide cache keyed by
    ``id(model)`` outlived the model and could hand a new model (at a reused address) a stale tokenizer.
    """
    with model.llg_lock:
        if model.llg_tokenizer is None:
            model.llg_tokenizer = _build_tokenizer(model)
        return model.llg_tokenizer


def _build_tokenizer(model: Any) -> Any:
    import llama_cpp as lc
    from llguidance import LLTokenizer

    vocab = model.vocab
    tokens: list[bytes] = []
    for t in range(model.n_vocab):
        piece = model.piece(t, special=True)
        if lc.llama_vocab_get_attr(vocab, t) & lc.LLAMA_TOKEN_ATTR_CONTROL:
            piece = b"\xff" + piece  # llguidance's marker: only matched by <|name|> / <[id]> in grammars
        tokens.append(piece)
    fptr = ctypes.cast(lc.llama_cpp._lib.llama_tokenize, ctypes.c_void_p).value
    return LLTokenizer.from_llamacpp(  # type: ignore[attr-defined]
        tokens=tokens, vocab_ptr=vocab, tokenize_fptr=fptr, eos_token=model.eos, slices=None
    )


_LITERAL = re.compile(r'\x00("(?:[^"\\]|\\.)*")\x00')


def lit(text: str) -> str:
    """A grammar literal placeholder; :func:`resolve_literals` turns it into ``<[id]>`` when ``text`` is
    one special token of the model, else into a quoted string."""
    return "\x00" + json.dumps(text) + "\x00"


def single_token(model: Any, text: str) -> int | None:
    """The token id when ``text`` is exactly one token of the model (special tokens included)."""
    ids = model.tokenize(text, add_special=False, parse_special=True)
    return ids[0] if len(ids) == 1 else None


def preserved_tokens(model: Any, texts: list[str]) -> frozenset[int]:
    """The ids of those ``texts`` that are one token of ``model`` (markers rendered as text)."""
    ids = (single_token(model, text) for text in texts)
    return frozenset(t for t in ids if t is not None)


def _is_control(model: Any, token: int) -> bool:
    import llama_cpp as lc

    return bool(lc.llama_vocab_get_attr(model.vocab, token) & lc.LLAMA_TOKEN_ATTR_CONTROL)


def resolve_literals(grammar: str, model: Any) -> str:
    """Replace :func:`lit` placeholders: a control token becomes ``<[id]>``."""

    def sub(m: re.Match[str]) -> str:
        text = json.loads(m.group(1))
        tok = single_token(model, text)
        if tok is not None and _is_control(model, tok):
            return f"<[{tok}]>"
        return json.dumps(text)

    return _LITERAL.sub(sub, grammar)


def check_grammar(grammar: str, tokenizer: Any, param: str) -> None:
    """400 naming the problem when llguidance rejects ``grammar`` (unsupported schema features included)."""
    from llguidance import LLMatcher

    is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar, tokenizer)
    if is_error or messages:
        detail = "; ".join(short_error(m) for m in messages) or "invalid grammar"
        raise InvalidRequestError(f"{param}: this schema cannot be enforced: {detail}", param=param)


def _first_line(message: str) -> str:
    line = message.removeprefix("WARNING: ").strip().splitlines()[0] if message.strip() else message
    return re.sub(r"^at \d+\(\d+\): ", "", line).removeprefix("failed to compile JSON schema: ")


_MAX_ERROR = 300


def short_error(message: str) -> str:
    """llguidance's error without the parser state it appends (``<state>`` dumps, token lists): one line,
    at most a few hundred characters. The state is internal and can be many kilobytes."""
    line = _first_line(message).split("<state>", 1)[0].strip()
    return line if len(line) <= _MAX_ERROR else line[: _MAX_ERROR - 3] + "..."


class GrammarConstraint:
    """One request's llguidance matcher, its mask buffer and the model's end-of-generation tokens."""

    __slots__ = ("_eog", "_eos", "_mask", "_matcher", "_n_vocab", "grammar", "param")

    def __init__(
        self,
        grammar: str,
        tokenizer: Any,
        *,
        n_vocab: int,
        eos: int,
        eog: frozenset[int],
        param: str = "response_format",
    ) -> None:
        from llguidance import LLMatcher

        self.param = param
        self.grammar = grammar  # the resolved Lark text: another process rebuilds the matcher from it
        self._matcher = LLMatcher(tokenizer, grammar, log_level=0)
        if self._matcher.is_error():
            raise InvalidRequestError(
                f"{param}: this schema cannot be enforced: {short_error(self._matcher.get_error())}",
                param=param,
            )
        self._n_vocab = n_vocab
        self._mask = np.zeros((max(n_vocab, tokenizer.vocab_size) + 31) // 32, dtype=np.int32)
        self._eos = eos
        self._eog = np.fromiter(sorted(eog - {eos}), dtype=np.int64)

    def compute_mask(self) -> None:
        """Fill the mask for the next token (drops the GIL; safe in a worker thread)."""
        m = self._mask
        self._matcher.unsafe_compute_mask_ptr(m.ctypes.data, m.nbytes)

    def allowed(self) -> np.ndarray:
        """Boolean array over the vocabulary: which tokens the last computed mask allows."""
        bits = np.unpackbits(self._mask.view(np.uint8), bitorder="little")[: self._n_vocab].astype(bool)
        if self._eos >= 0 and bits[self._eos] and self._eog.size:
            bits[self._eog] = True  # any end-of-generation token ends the turn when EOS may
        return bits

    def apply(self, logits: np.ndarray) -> None:
        """Set disallowed tokens' logits to -inf, in place."""
        np.putmask(logits, ~self.allowed(), NEG_INF)

    def accept(self, token: int) -> bool:
        """Advance the matcher past ``token``; False if it breaks the grammar."""
        return bool(self._matcher.consume_token(token))

    @property
    def done(self) -> bool:
        """True when the grammar cannot be extended any further."""
        return bool(self._matcher.is_stopped())

    @property
    def error(self) -> str:
        """Why the matcher failed, for the client: one short line naming the parameter ('' if none)."""
        err = self._matcher.get_error()
        if not err:
            return ""
        return f"{self.param}: the output cannot satisfy this schema: {short_error(str(err))}"


def rebuild_constraint(grammar: str, param: str, model: Any) -> GrammarConstraint:
    """A fresh constraint from a :attr:`GrammarConstraint.grammar` already checked by
    :func:`build_constraint` for the same vocabulary (the child-process engine's side of it)."""
    return GrammarConstraint(
        grammar, llg_tokenizer(model), n_vocab=model.n_vocab, eos=model.eos, eog=model.eog_tokens, param=param
    )


def build_constraint(grammar: str, param: str, model: Any) -> GrammarConstraint:
    """Compile ``grammar`` for ``model`` (blocking: run it off the event loop); 400 if unenforceable."""
    tokenizer = llg_tokenizer(model)  # the model's, not the request's: a failure here is ours
    try:
        lark = resolve_literals(grammar, model)
        check_grammar(lark, tokenizer, param)
        return GrammarConstraint(
            lark, tokenizer, n_vocab=model.n_vocab, eos=model.eos, eog=model.eog_tokens, param=param
        )
    except InvalidRequestError:
        raise
    except Exception as exc:  # the grammar comes from the request: whatever llguidance refuses is a 400
        raise InvalidRequestError(
            f"{param}: this schema cannot be enforced: {short_error(str(exc)) or type(exc).__name__}",
            param=param,
        ) from None

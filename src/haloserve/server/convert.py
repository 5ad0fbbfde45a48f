"""OpenAI requests -> engine requests: prompts, sampling settings and the context-length check."""

from __future__ import annotations

from typing import Any

from haloserve.config.serve import ServeSettings
from haloserve.engine.base import Constraint, Engine, GenerationRequest, SamplingParams
from haloserve.engine.chat_template import ChatTemplate
from haloserve.errors import ContextLengthExceededError, InvalidRequestError
from haloserve.protocol.openai import ChatCompletionRequest, CompletionRequest, SamplingFields


def sampling_params(req: SamplingFields, defaults: ServeSettings, n_vocab: int) -> SamplingParams:
    """Resolve a request's sampling fields against the server defaults (llama-server's semantics)."""
    bias: dict[int, float] = {}
    for key, value in (req.logit_bias or {}).items():
        tok = int(key)
        if not 0 <= tok < n_vocab:
            raise InvalidRequestError(
                f"logit_bias token id {tok} is outside the vocabulary (0..{n_vocab - 1})", param="logit_bias"
            )
        bias[tok] = value

    def pick(value: Any, default: Any) -> Any:
        return default if value is None else value

    return SamplingParams(
        temperature=pick(req.temperature, defaults.temp),
        top_k=pick(req.top_k, defaults.top_k),
        top_p=pick(req.top_p, defaults.top_p),
        min_p=pick(req.min_p, defaults.min_p),
        repeat_penalty=pick(req.repeat_penalty, defaults.repeat_penalty),
        repeat_last_n=pick(req.repeat_last_n, defaults.repeat_last_n),
        presence_penalty=pick(req.presence_penalty, 0.0),
        frequency_penalty=pick(req.frequency_penalty, 0.0),
        seed=req.seed,
        logit_bias=bias,
        ignore_eos=bool(req.ignore_eos),
        min_tokens=req.min_tokens or 0,
    )


def check_unsupported(req: SamplingFields) -> None:
    """Refuse, with a 400 naming the parameter, what this server cannot do rather than ignore it."""
    if req.n not in (None, 1):
        raise InvalidRequestError("only n=1 is supported", param="n")
    if isinstance(req, CompletionRequest):
        if req.best_of not in (None, 1):
            raise InvalidRequestError("only best_of=1 is supported", param="best_of")
        if req.suffix:
            raise InvalidRequestError("suffix (fill-in-the-middle) is not supported", param="suffix")


def fit_max_tokens(prompt_len: int, requested: int | None, n_ctx_slot: int) -> int:
    """``max_tokens`` that fits one slot, or a 400 ``context_length_exceeded`` with the numbers."""
    if prompt_len >= n_ctx_slot or (requested is not None and prompt_len + requested > n_ctx_slot):
        wanted = prompt_len + (requested or 1)
        raise ContextLengthExceededError(
            f"This model's maximum context length is {n_ctx_slot} tokens per slot. However, you requested "
            f"{wanted} tokens ({prompt_len} in the prompt, {requested or 1} for the completion). "
            "Please reduce the length of the prompt or the completion.",
            param="messages" if requested is None else "max_tokens",
        )
    return requested if requested is not None else n_ctx_slot - prompt_len


# No vocabulary we know has a token longer than this many characters, so a text longer than this many
# characters per token of a slot cannot fit a slot, whatever it tokenises to: it is refused before the
# (costly) template rendering and tokenising.
MAX_CHARS_PER_TOKEN = 256


def check_size(req: ChatCompletionRequest | CompletionRequest, n_ctx_slot: int) -> None:
    """400 ``context_length_exceeded`` at once for a request too large for one slot by its size alone:
    more messages or prompt token ids than the slot has tokens, or more characters than it could hold."""
    limit = n_ctx_slot * MAX_CHARS_PER_TOKEN
    if isinstance(req, ChatCompletionRequest):
        if len(req.messages) > n_ctx_slot:
            raise ContextLengthExceededError(
                f"{len(req.messages)} messages cannot fit in one slot of {n_ctx_slot} tokens "
                "(every message takes at least one token)",
                param="messages",
            )
        chars = 0
        for m in req.messages:
            if isinstance(m.content, str):
                chars += len(m.content)
            elif m.content:
                chars += sum(len(p.text or "") for p in m.content)
            chars += len(m.reasoning_content or "")
            chars += sum(len(tc.function.arguments) for tc in m.tool_calls or ())
        param = "messages"
    else:
        prompt: Any = req.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            prompt = prompt[0] if len(prompt) == 1 else ""  # several prompts: refused later, by name
        if isinstance(prompt, list):
            if len(prompt) >= n_ctx_slot:
                raise ContextLengthExceededError(
                    f"a prompt of {len(prompt)} tokens cannot fit in one slot of {n_ctx_slot} tokens",
                    param="prompt",
                )
            return
        chars, param = len(prompt), "prompt"
    if chars > limit:
        raise ContextLengthExceededError(
            f"{param}: {chars} characters cannot fit in one slot of {n_ctx_slot} tokens "
            f"(refused above {limit} characters, {MAX_CHARS_PER_TOKEN} per token)",
            param=param,
        )


def chat_messages(req: ChatCompletionRequest) -> list[dict[str, Any]]:
    """Messages as plain dicts for the template, content flattened to text."""
    out: list[dict[str, Any]] = []
    for m in req.messages:
        msg: dict[str, Any] = {"role": m.role, "content": m.text()}
        if m.name:
            msg["name"] = m.name
        if m.tool_call_id:
            msg["tool_call_id"] = m.tool_call_id
        if m.tool_calls:
            msg["tool_calls"] = [tc.model_dump() for tc in m.tool_calls]
        if m.reasoning_content:
            msg["reasoning_content"] = m.reasoning_content
        out.append(msg)
    return out


def chat_prompt(
    req: ChatCompletionRequest,
    engine: Engine,
    template: ChatTemplate,
    messages: list[dict[str, Any]] | None = None,
    tools: list[dict[str, Any]] | None = None,
) -> tuple[list[int], str]:
    """Render the chat template and tokenise it (BOS added unless the template already starts with it).

    Returns the tokens and the prompt text."""
    text = template.render(
        chat_messages(req) if messages is None else messages,
        add_generation_prompt=req.add_generation_prompt and not req.continue_final_message,
        tools=tools,
        extra=req.chat_template_kwargs,
    )
    if req.continue_final_message and req.messages[-1].role == "assistant":
        tail = req.messages[-1].text()
        idx = text.rfind(tail)
        if idx >= 0:
            text = text[: idx + len(tail)]
    tok = engine.tokenizer
    add_bos = not (tok.bos_text and text.startswith(tok.bos_text))
    return tok.tokenize(text, add_special=add_bos, parse_special=True), text


def completion_prompt(req: CompletionRequest, engine: Engine) -> tuple[list[int], str]:
    """Tokens and text of a completions prompt (a string, token ids, or a list of exactly one)."""
    prompt: Any = req.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        if len(prompt) != 1:
            raise InvalidRequestError("only one prompt per request is supported", param="prompt")
        prompt = prompt[0]
    tok = engine.tokenizer
    if isinstance(prompt, str):
        if prompt == "":
            raise InvalidRequestError("prompt must not be empty", param="prompt")
        return tok.tokenize(prompt, add_special=True, parse_special=True), prompt
    ids = [int(t) for t in prompt]
    if not ids:
        raise InvalidRequestError("prompt must not be empty", param="prompt")
    n_vocab = engine.info.n_vocab
    bad = next((t for t in ids if not 0 <= t < n_vocab), None)
    if bad is not None:
        raise InvalidRequestError(f"prompt token id {bad} is outside the vocabulary", param="prompt")
    return ids, tok.detokenize(ids)


def request_limits(
    req: SamplingFields, prompt_len: int, max_tokens: int | None, engine: Engine, defaults: ServeSettings
) -> tuple[int, SamplingParams]:
    """The token budget (fitted to one slot's context) and the sampling settings of a request; a 400
    for what cannot be served, before any costly work (grammar compilation) is done."""
    info = engine.info
    limit = fit_max_tokens(prompt_len, max_tokens, info.n_ctx_slot)
    if defaults.n_predict > 0:  # the server-wide cap, as llama-server's --n-predict
        limit = min(limit, defaults.n_predict)
    return limit, sampling_params(req, defaults, info.n_vocab)


def generation_request(
    request_id: str,
    req: SamplingFields,
    prompt: list[int],
    limits: tuple[int, SamplingParams],
    *,
    arrival_time: float,
    constraint: Constraint | None = None,
    logprobs: int | None = None,
    preserved_tokens: frozenset[int] = frozenset(),
) -> GenerationRequest:
    """Everything the engine needs for one request, built once (see :func:`request_limits`)."""
    max_tokens, sampling = limits
    return GenerationRequest(
        request_id=request_id,
        prompt_tokens=prompt,
        max_tokens=max_tokens,
        sampling=sampling,
        stop=req.stop_list(),
        arrival_time=arrival_time,
        constraint=constraint,
        logprobs=logprobs,
        preserved_tokens=preserved_tokens,
    )

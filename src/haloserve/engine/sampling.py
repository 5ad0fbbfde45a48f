"""Per-request sampler chains built from llama.cpp's native samplers.

The order follows llama.cpp's defaults (common/sampling.cpp): logit bias, penalties, top-k, top-p,
min-p, temperature, then the seeded distribution (or greedy). Penalties see the prompt's last tokens,
as in llama-server. ``ignore_eos`` and ``min_tokens`` ban end-of-generation tokens with a separate
bias sampler at the head of the chain, removed once ``min_tokens`` have been produced.

Two faster paths give the same tokens as the chain: a greedy request with no bias or penalties is an
arg-max over the row (numpy, no 128k-entry candidate array built per token, see :attr:`Sampler.argmax`),
and a chain whose samplers llama.cpp can run in the compute graph (greedy, temperature, top-k/top-p/
min-p and the seeded distribution) can be attached to the context as a backend sampler
(:func:`offloadable`), so the token comes back from the decode itself.
"""

from __future__ import annotations

import ctypes
import random
from collections.abc import Iterable, Sequence
from typing import Any

import llama_cpp as lc
import numpy as np

from haloserve.engine.base import SamplingParams

NEG_INF = float("-inf")
# llama_token_data as numpy lays it out, so a row of logits becomes a candidate array without a loop
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


def _bias_sampler(n_vocab: int, biases: Iterable[tuple[int, float]]) -> ctypes.c_void_p:
    items = list(biases)
    arr: Any = (lc.llama_logit_bias * len(items))()
    for i, (tok, bias) in enumerate(items):
        arr[i].token = tok
        arr[i].bias = bias
    return lc.llama_sampler_init_logit_bias(n_vocab, len(items), arr)


def _penalised(params: SamplingParams) -> bool:
    pen = params.repeat_penalty != 1.0 or params.presence_penalty != 0.0 or params.frequency_penalty != 0.0
    return pen and params.repeat_last_n != 0


def offloadable(params: SamplingParams) -> bool:
    """Whether the chain of ``params`` may run as a backend sampler (in llama.cpp's compute graph).

    Logit bias and penalties stay on the CPU (as llama-server keeps them), and so does a ``min_tokens``
    ban, which is removed from the chain mid-request; ``ignore_eos`` (a fixed ban) may go.
    """
    return not params.logit_bias and not _penalised(params) and params.min_tokens == 0


class Sampler:
    """A llama.cpp sampler chain for one request, freed with :meth:`close`."""

    __slots__ = ("_eog_banned", "argmax", "attached", "ban", "ban_until", "chain", "min_tokens", "seed")

    def __init__(
        self,
        params: SamplingParams,
        *,
        n_vocab: int,
        eog_tokens: Iterable[int],
        prompt_tail: Sequence[int] = (),
    ) -> None:
        eog_tokens = tuple(eog_tokens)  # read twice below
        cparams = lc.llama_sampler_chain_default_params()
        cparams.no_perf = True
        chain = lc.llama_sampler_chain_init(cparams)
        self.chain = chain
        self.min_tokens = params.min_tokens
        ban_eog = params.ignore_eos or params.min_tokens > 0
        self._eog_banned = ban_eog and not params.ignore_eos  # removable ban (min_tokens only)
        # greedy with nothing but an EOG ban before it: the chain's pick is the row's first maximum
        self.argmax = params.greedy and not params.logit_bias and not _penalised(params)
        self.ban = np.fromiter(eog_tokens, dtype=np.intp) if ban_eog else None
        self.ban_until = 1 << 62 if params.ignore_eos else params.min_tokens
        self.attached: tuple[Any, int] | None = None  # (context, seq) running this chain in its graph
        if ban_eog:
            lc.llama_sampler_chain_add(chain, _bias_sampler(n_vocab, ((t, NEG_INF) for t in eog_tokens)))
        if params.logit_bias:
            valid = [(t, b) for t, b in params.logit_bias.items() if 0 <= t < n_vocab]
            lc.llama_sampler_chain_add(chain, _bias_sampler(n_vocab, valid))
        if _penalised(params):
            last_n = params.repeat_last_n if params.repeat_last_n > 0 else 1 << 20
            lc.llama_sampler_chain_add(
                chain,
                lc.llama_sampler_init_penalties(
                    n_vocab, last_n, params.repeat_penalty, params.frequency_penalty, params.presence_penalty
                ),
            )
            tail = prompt_tail[-last_n:] if params.repeat_last_n > 0 else prompt_tail
            for tok in tail:
                lc.llama_sampler_accept(chain, tok)
        self.seed = params.seed if params.seed is not None else random.getrandbits(32)
        if params.greedy:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
            return
        if params.top_k > 0:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_k(params.top_k))
        if params.top_p < 1.0:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(params.top_p, 1))
        if params.min_p > 0.0:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_min_p(params.min_p, 1))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(params.temperature))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(self.seed & 0xFFFFFFFF))

    def _lift_ban(self, n_generated: int) -> None:
        if self._eog_banned and n_generated >= self.min_tokens:
            removed = lc.llama_sampler_chain_remove(self.chain, 0)
            lc.llama_sampler_free(removed)
            self._eog_banned = False

    def argmax_row(self, row: np.ndarray, n_generated: int) -> int:
        """What the greedy chain picks from ``row`` (writable: banned tokens are set to -inf in it)."""
        if self.ban is not None and n_generated < self.ban_until:
            row[self.ban] = NEG_INF
        return int(row.argmax())  # the first maximum, as llama.cpp's greedy sampler

    def sample(self, ctx: ctypes.c_void_p, idx: int, n_generated: int) -> int:
        """Sample (and accept) the next token from the logits at batch index ``idx``."""
        self._lift_ban(n_generated)
        return int(lc.llama_sampler_sample(self.chain, ctx, idx))

    def sample_logits(self, logits: np.ndarray, n_generated: int) -> int:
        """Sample (and accept) the next token from a row of logits held in memory.

        What ``llama_sampler_sample`` does with a context's row (apply the chain to every token, take
        the selected one, accept it), for backends that have no llama.cpp context (the fake backend).
        """
        self._lift_ban(n_generated)
        cand = np.zeros(len(logits), dtype=_TOKEN_DATA)
        cand["id"] = np.arange(len(logits), dtype=np.int32)
        cand["logit"] = logits
        arr = lc.llama_token_data_array(
            data=cand.ctypes.data_as(ctypes.POINTER(lc.llama_token_data)),
            size=len(cand),
            selected=-1,
            sorted=False,
        )
        lc.llama_sampler_apply(self.chain, ctypes.byref(arr))
        if not 0 <= arr.selected < arr.size:
            raise RuntimeError("the sampler chain selected no token")
        tok = int(arr.data[arr.selected].id)  # samplers sort and shrink the array in place
        lc.llama_sampler_accept(self.chain, tok)
        return tok

    def attach(self, ctx: Any, seq: int) -> bool:
        """Run this chain in ``ctx``'s compute graph for sequence ``seq``; False if llama.cpp refused."""
        if self.chain and lc.llama_set_sampler(ctx, seq, self.chain):
            self.attached = (ctx, seq)
        return self.attached is not None

    def close(self) -> None:
        """Detach the chain from its context (it must not outlive it there), then free it."""
        if self.attached is not None:
            ctx, seq = self.attached
            self.attached = None
            lc.llama_set_sampler(ctx, seq, None)
        if self.chain:
            lc.llama_sampler_free(self.chain)
            self.chain = None

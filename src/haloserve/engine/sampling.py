"""Per-request sampler chains built from llama.cpp's native samplers.

The order follows llama.cpp's defaults (common/sampling.cpp): logit bias, penalties, top-k, top-p,
min-p, temperature, then the seeded distribution (or greedy). Penalties see the prompt's last tokens,
as in llama-server. ``ignore_eos`` and ``min_tokens`` ban end-of-generation tokens with a separate
bias sampler at the head of the chain, removed once ``min_tokens`` have been produced.
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


class Sampler:
    """A llama.cpp sampler chain for one request, freed with :meth:`close`."""

    __slots__ = ("_eog_banned", "chain", "min_tokens", "seed")

    def __init__(
        self,
        params: SamplingParams,
        *,
        n_vocab: int,
        eog_tokens: Iterable[int],
        prompt_tail: Sequence[int] = (),
    ) -> None:
        cparams = lc.llama_sampler_chain_default_params()
        cparams.no_perf = True
        chain = lc.llama_sampler_chain_init(cparams)
        self.chain = chain
        self.min_tokens = params.min_tokens
        ban_eog = params.ignore_eos or params.min_tokens > 0
        self._eog_banned = ban_eog and not params.ignore_eos  # removable ban (min_tokens only)
        if ban_eog:
            lc.llama_sampler_chain_add(chain, _bias_sampler(n_vocab, ((t, NEG_INF) for t in eog_tokens)))
        if params.logit_bias:
            valid = [(t, b) for t, b in params.logit_bias.items() if 0 <= t < n_vocab]
            lc.llama_sampler_chain_add(chain, _bias_sampler(n_vocab, valid))
        penalised = (
            params.repeat_penalty != 1.0 or params.presence_penalty != 0.0 or params.frequency_penalty != 0.0
        )
        if penalised and params.repeat_last_n != 0:
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

    def close(self) -> None:
        """Free the chain and its samplers."""
        if self.chain:
            lc.llama_sampler_free(self.chain)
            self.chain = None

"""LlamaModel.piece() from several threads at once (engine thread, event loop, grammar thread), and the
llguidance tokenizer kept on the model it was built from (issue 12, item 6)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from haloserve.engine.llamacpp import LlamaModel

pytestmark = pytest.mark.model

ROUNDS = 4
THREADS = 3


def test_piece_from_three_threads_matches_the_single_thread_truth(model_path: Path) -> None:
    truth_model = LlamaModel(model_path)
    model = LlamaModel(model_path)
    try:
        n = model.n_vocab
        truth = {sp: [truth_model.piece(t, special=sp) for t in range(n)] for sp in (False, True)}
        assert len({p for p in truth[True] if p}) > n // 2  # a real vocabulary, mostly distinct pieces
        wrong: list[tuple[int, bool, bytes]] = []
        for _ in range(ROUNDS):
            # empty caches: every call below goes to llama.cpp, where the GIL is released
            model._pieces.clear()
            model._special_pieces.clear()
            start = threading.Barrier(THREADS)

            def worker(k: int, start: threading.Barrier = start) -> None:
                start.wait()
                for i in range(n):
                    t = (i * 7919 + k * (n // THREADS)) % n  # each thread its own order
                    for sp in (k % 2 == 0, k % 2 == 1):
                        got = model.piece(t, special=sp)
                        if got != truth[sp][t]:
                            wrong.append((t, sp, got))

            threads = [threading.Thread(target=worker, args=(k,)) for k in range(THREADS)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            assert wrong == [], f"{len(wrong)} wrong pieces, e.g. {wrong[:3]}"
            # what stayed in the cache is right too
            assert all(model._pieces[t] == truth[False][t] for t in range(n))
            assert all(model._special_pieces[t] == truth[True][t] for t in range(n))
    finally:
        model.close()
        truth_model.close()


def test_llguidance_tokenizer_lives_on_its_model(model_path: Path) -> None:
    pytest.importorskip("llguidance")
    from haloserve.engine.grammar import llg_tokenizer

    a = LlamaModel(model_path)
    b = LlamaModel(model_path)
    try:
        tok = llg_tokenizer(a)
        assert llg_tokenizer(a) is tok and a.llg_tokenizer is tok  # built once, kept on the model
        assert llg_tokenizer(b) is not tok  # another model never gets a's (no id()-keyed global)
        a.close()
        assert a.llg_tokenizer is None  # freed with the model that owns the vocabulary it points into
    finally:
        a.close()
        b.close()

"""How long ``halo plan`` takes: the GGUF header reader against gguf's GGUFReader, and plan_model.

Writes a GGUF with a Qwen3-sized tokenizer (151,936 tokens and as many merges, tiny tensors), then
times reading its header both ways and planning every catalog model. Run:

    .venv/bin/python benchmarks/plan_reader.py [--vocab 151936] [--skip-gguf-reader]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import gguf
import numpy as np

from haloserve.planner import PlanInputs, load_catalog, node_budget, plan_model
from haloserve.planner.gguf_header import read_header
from haloserve.planner.gguf_source import read_gguf
from haloserve.planner.weights import estimate_weights
from haloserve.units import GiB


def write_big_vocab(path: Path, vocab: int) -> None:
    """A small llama-shaped GGUF whose tokenizer is as large as a real Qwen3 one."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_context_length(4096)
    w.add_embedding_length(64)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"token-{i}" for i in range(vocab)])
    w.add_token_merges([f"a{i} b{i}" for i in range(vocab)])
    w.add_token_types([1] * vocab)
    w.add_tensor("token_embd.weight", np.zeros((16, 64), dtype=np.float32))
    w.add_tensor("blk.0.attn_k.weight", np.zeros((64, 64), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def timed(label: str, fn: object, repeat: int = 1) -> float:
    """Best wall time of ``repeat`` calls, printed."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        best = min(best, time.perf_counter() - start)
    print(f"{label:<52} {best * 1000:10.1f} ms")
    return best


def main() -> None:
    """Run the benchmark and print one line per measurement."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--skip-gguf-reader", action="store_true", help="do not time GGUFReader (slow)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vocab.gguf"
        write_big_vocab(path, args.vocab)
        print(f"GGUF with {args.vocab:,} tokens and merges: {path.stat().st_size / 1e6:.1f} MB")
        timed("haloserve read_header", lambda: read_header(path), repeat=3)
        timed("haloserve read_gguf (spec + exact weights)", lambda: read_gguf(path), repeat=3)
        if not args.skip_gguf_reader:
            timed("gguf.GGUFReader", lambda: gguf.GGUFReader(str(path)))
    budget = node_budget(128 * GiB, gpu_limit_bytes=int(119.5 * GiB))
    for key, entry in load_catalog().items():
        spec = entry.spec()
        weights = estimate_weights(spec, entry.default_quant)
        inputs = PlanInputs(ctx=min(spec.ctx_train, 131072), parallel=2, type_k="q8_0", type_v="q8_0")
        timed(f"plan_model {key}", lambda s=spec, w=weights, i=inputs: plan_model(s, w, budget, i), repeat=3)


if __name__ == "__main__":
    main()

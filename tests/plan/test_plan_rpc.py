"""``halo plan --nodes N``: the RPC split as commands to paste, proportional to each node's GPU memory."""

from __future__ import annotations

import argparse
import json

import pytest

from haloserve.cli import main
from haloserve.cli.options import settings_flags
from haloserve.cli.serve import add_arguments as serve_arguments
from haloserve.config import load_settings
from haloserve.config.serve import ServeSettings
from haloserve.errors import ConfigError
from haloserve.planner import PlanInputs, lookup, node_budget, plan_model
from haloserve.planner.budget import tuned_budget
from haloserve.planner.cluster import format_split, layer_owner, tensor_split_for
from haloserve.planner.weights import estimate_weights
from haloserve.units import GiB

BIG = ["qwen3-235b-a22b", "--ctx", "65536", "--kv-type", "q8_0", "--gpu-limit", "119.5"]


def plan_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:  # type: ignore[type-arg]
    code = main(["plan", *argv, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)  # type: ignore[no-any-return]


def serve_settings(argv: list[str]) -> ServeSettings:
    """Parse a planned ``halo serve`` line with halo serve's own flags (so every flag must exist)."""
    parser = argparse.ArgumentParser()
    serve_arguments(parser)
    return load_settings(ServeSettings, flags=settings_flags(parser.parse_args(argv), ServeSettings))


def test_uneven_split_follows_llama_cpp_upper_bound() -> None:
    # 3:1 over 4 decoder layers + output (5 slots): cumulative points 0.75, 1.0; il/5 < 0.75 -> device 0
    owners = [layer_owner(il, 4, 2, (3.0, 1.0)) for il in range(5)]
    assert owners == [0, 0, 0, 0, 1]
    assert [layer_owner(il, 4, 2, (1.0, 1.0)) for il in range(5)] == [
        layer_owner(il, 4, 2) for il in range(5)
    ]
    assert [layer_owner(il, 4, 2, (1.0, 3.0)) for il in range(5)] == [0, 0, 1, 1, 1]  # 0.2 < 0.25


def test_tensor_split_is_proportional_to_usable_memory() -> None:
    big, small = tuned_budget(128 * GiB)[0], tuned_budget(64 * GiB)[0]
    assert format_split(tensor_split_for([big.usable_bytes, big.usable_bytes])) == "1,1"
    split = tensor_split_for([small.usable_bytes, big.usable_bytes])
    assert format_split(split) == "56,120" and split[1] / split[0] == pytest.approx(120 / 56)


def test_uneven_split_moves_layers_to_the_bigger_node() -> None:
    entry = lookup("qwen3-235b-a22b")
    spec = entry.spec()
    weights = estimate_weights(spec, entry.default_quant)
    budget = node_budget(128 * GiB, gpu_limit_bytes=int(119.5 * GiB))
    even = plan_model(spec, weights, budget, PlanInputs(ctx=32768, nodes=2))
    uneven = plan_model(spec, weights, budget, PlanInputs(ctx=32768, nodes=2, tensor_split=(1.0, 3.0)))
    assert even.cluster is not None and uneven.cluster is not None
    assert uneven.cluster.tensor_split == "1,3"
    worker, main_node = uneven.cluster.rpc
    assert worker.weights_bytes < even.cluster.rpc[0].weights_bytes < main_node.weights_bytes
    assert main_node.holds_output and not worker.holds_output
    with pytest.raises(ConfigError, match="2 positive values"):
        PlanInputs(nodes=2, tensor_split=(1.0,))


def test_split_commands_for_workers_and_main(capsys: pytest.CaptureFixture[str]) -> None:
    data = plan_json(
        [*BIG, "--nodes", "3", "--node-address", "fd00::1,10.0.1.2", "--node-address", "10.0.1.3"], capsys
    )
    launch = data["rpc_launch"]
    assert launch["split_needed"] and launch["fits"]
    workers = [c for c in launch["commands"] if c["role"] == "worker"]
    (main_cmd,) = [c for c in launch["commands"] if c["role"] == "main"]
    assert [w["argv"][:6] for w in workers] == [
        ["halo", "rpc-worker", "--host", "10.0.1.2", "--port", "50052"],
        ["halo", "rpc-worker", "--host", "10.0.1.3", "--port", "50052"],
    ]
    assert main_cmd["node"] == "fd00::1" and launch["commands"][-1] is not workers[-1]
    # the same split and workers as the plan's table and LLAMA_ARG_* lines (one truth)
    env = data["llama_server_env"]
    assert (
        launch["tensor_split"] == data["cluster"]["tensor_split"] == env["LLAMA_ARG_TENSOR_SPLIT"] == "1,1,1"
    )
    settings = serve_settings(main_cmd["argv"][2:])
    # halo serve reads --rpc a,b as llama-server does (a list either way)
    assert ",".join(settings.rpc) == env["LLAMA_ARG_RPC"] == "10.0.1.2:50052,10.0.1.3:50052"
    assert settings.tensor_split == [1.0, 1.0, 1.0]
    assert (
        settings.ctx_size == 65536 and settings.cache_type_k == "q8_0" and settings.n_gpu_layers == -1
    )  # 999: all
    assert settings.rope_scaling == "yarn" and settings.yarn_orig_ctx == int(env["LLAMA_ARG_YARN_ORIG_CTX"])
    assert "--rpc 10.0.1.2:50052,10.0.1.3:50052 --tensor-split 1,1,1 " in main_cmd["command"]


def test_split_commands_in_the_table_use_placeholders(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "160")
    assert main(["plan", *BIG, "--nodes", "2"]) == 0
    out = capsys.readouterr().out
    assert "halo rpc-worker --host node2 --port 50052 --cache ~/.cache/llama.cpp/rpc" in out
    assert "halo serve --model Qwen3-235B-A22B-Q4_K_M.gguf --rpc node2:50052 --tensor-split 1,1 " in out
    assert "node2 (rpc-worker)" in out and "node1 (main)" in out


def test_a_model_that_fits_one_node_gets_no_split(capsys: pytest.CaptureFixture[str]) -> None:
    data = plan_json(["qwen3-8b", "--ctx", "32768", "--nodes", "2"], capsys)
    launch = data["rpc_launch"]
    assert launch["split_needed"] is False and launch["commands"] == []
    assert "fits on one node" in launch["note"]
    assert main(["plan", "qwen3-8b", "--ctx", "32768", "--nodes", "2"]) == 0
    out = capsys.readouterr().out
    assert "fits on one node" in out and "halo rpc-worker" not in out
    assert plan_json(["qwen3-8b"], capsys)["rpc_launch"] is None


def test_a_split_that_does_not_fit_prints_no_commands(capsys: pytest.CaptureFixture[str]) -> None:
    data = plan_json(["qwen3-235b-a22b", "--quant", "Q8_0", "--nodes", "2", "--ram", "64"], capsys)
    assert data["rpc_launch"]["fits"] is False and data["rpc_launch"]["commands"] == []
    assert "needs" in data["rpc_launch"]["note"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--node-address", "a;rm -rf /,b"], "is not an IP address or a host name"),
        (["--node-address", "10.0.0.1"], "gives 1 address(es) for 2 node(s)"),
        (["--node-address", "10.0.0.1,fd00::2"], "is the IPv4 address halo rpc-worker listens on"),
        (["--node-address", "main,node2"], "is the IPv4 address halo rpc-worker listens on"),
    ],
)
def test_bad_node_addresses_are_one_line(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", *BIG, "--nodes", "2", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("halo plan: error: ") and message in err and len(err.strip().splitlines()) == 1

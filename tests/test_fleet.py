"""Ray for what outgrows one machine, on a real local cluster: a head node and a second
node on loopback, each with one CPU and its own custom resource ("alpha", "beta"),
started by this module and stopped by process id (every process of their sessions).

- ``export --ray``: calibration sharded over the cluster gives a calibration.json
  byte-identical to a single-process run's, and the same artifacts;
- ``bench --ray … --on alpha,beta``: the export folder is shipped to each labelled node,
  checked there, benched there; one table and one JSON with each node's record."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from quantship.exporter.plan_search import GUIDED

pytestmark = pytest.mark.slow


def _cli(*args: str, cache: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, **({"QUANTSHIP_CACHE_DIR": str(cache)} if cache else {}))
    return subprocess.run(
        [sys.executable, "-m", "quantship", *args], capture_output=True, text=True, timeout=900,
        env=env,
    )  # fmt: skip


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'quantship[ray]'")
    pytest.importorskip("psutil")
    from quantship.fleet import local_cluster

    with local_cluster([{"alpha": 1}, {"beta": 1}]) as address:
        yield address


def test_sharded_calibration_is_identical_and_bench_runs_on_labelled_nodes(
    cluster: str, tmp_path: Path, cnn_path: Path, calib_npz: Path
) -> None:
    outs = {}
    for name, extra in (("local", ()), ("ray", ("--ray", cluster))):
        outs[name] = tmp_path / name
        p = _cli("export", str(cnn_path), "--calib", str(calib_npz), "--out", str(outs[name]),
                 "--method", "entropy", "--no-bench", "-q", *extra)  # fmt: skip
        assert p.returncode == 0, p.stderr
    for rel in ("calibration.json", "onnxruntime/model.int8.onnx"):
        assert (outs["ray"] / rel).read_bytes() == (outs["local"] / rel).read_bytes(), rel
    calibration = json.loads((outs["ray"] / "manifest.json").read_text())["calibration"]
    sharded = calibration["sharded"]
    assert sharded["shards"] == 2 and sharded["cluster_cpus"] == 2
    assert sum(sharded["samples_per_shard"]) == calibration["samples"] > 0

    js = tmp_path / "fleet.json"
    p = _cli("bench", str(outs["ray"]), "--ray", cluster, "--on", "alpha,beta",
             "--iterations", "5", "--scenario", "single-stream", "--json", str(js))  # fmt: skip
    assert p.returncode == 0, p.stderr
    fleet = json.loads(js.read_text())
    runs = fleet["runs"]
    assert [r["fleet"]["label"] for r in runs] == ["alpha", "beta"]
    assert runs[0]["fleet"]["node_id"] != runs[1]["fleet"]["node_id"]
    for r in runs:
        assert r["machine"]["cpu"] and r["machine"]["isa"] is not None
        assert all(a["sha256_verified"] for a in r["artifacts"])
        assert {x["key"] for x in r["results"]} == {"onnxruntime:float:fp32", "onnxruntime:int8"}
    for label in ("alpha", "beta"):  # each node's machine line, named by label and address
        assert re.search(rf"^{label}@\S+: .*cores", p.stderr, re.M), p.stderr
    p = _cli("bench", "--compare", str(js), str(js))
    assert p.returncode == 0, p.stderr

    p = _cli("bench", str(outs["ray"]), "--ray", cluster, "--on", "alpah", "--iterations", "3")
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert "did you mean 'alpha'" in p.stderr


def test_guard_evaluations_run_in_parallel_with_the_same_decision(
    cluster: str, tmp_path: Path
) -> None:
    """The accuracy guard's region-by-region evaluations as Ray tasks: the same regions
    kept float, the same error, the same number of evaluations as in one process at the
    same --threads (each run with its own decision cache, so neither reads the
    other's)."""
    import numpy as np
    from models import save
    from test_guard import fragile_model

    model = save(fragile_model(), tmp_path / "fragile.onnx")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 3, 16, 16)).astype(np.float32)
    x[::16, 0, 3, 3] = 1000.0
    np.savez(tmp_path / "calib.npz", images=x)
    np.savez(tmp_path / "held.npz", images=rng.standard_normal((16, 3, 16, 16)).astype(np.float32))
    guards = {}
    for name, extra in (("local", ()), ("ray", ("--ray", cluster))):
        out = tmp_path / name
        p = _cli("export", str(model), "--calib", str(tmp_path / "calib.npz"), "--held-out",
                 str(tmp_path / "held.npz"), "--method", "minmax", "--max-drop", "0.01",
                 "--no-bench", "-q", "--threads", "1", "--out", str(out), *extra,
                 cache=tmp_path / f"cache-{name}")  # fmt: skip
        assert p.returncode == 0, p.stderr
        guards[name] = json.loads((out / "manifest.json").read_text())["artifacts"][0][
            "accuracy_guard"
        ]
    a, b = guards["local"], guards["ray"]
    assert a["float_nodes"] == b["float_nodes"] == ["conv1"]
    assert a["after"] == b["after"] and a["evaluations"] == b["evaluations"] > 2


def test_plan_search_builds_on_the_cluster(cluster: str, tmp_path: Path, cnn_path: Path,
                                           calib_npz: Path) -> None:  # fmt: skip
    """``--plan search --ray``: the variants are built as Ray tasks and their files
    come back; the same variants give the same artifacts (the same repeats, the same
    fidelity) as built in one process. Which is fastest is timed here either way."""
    records = {}
    for name, extra in (("local", ()), ("ray", ("--ray", cluster))):
        out = tmp_path / name
        p = _cli("export", str(cnn_path), "--calib", str(calib_npz), "--out", str(out),
                 "--plan", "search", "--threads", "1", "-q", "--no-bench", *extra,
                 cache=tmp_path / f"cache-{name}")  # fmt: skip
        assert p.returncode == 0, p.stderr
        rec = json.loads((out / "manifest.json").read_text())["artifacts"][0]["plan_search"]
        records[name] = [
            (r["plan"], r.get("same_as"), r.get("cosine"))
            for r in rec["plans"]
            if r["plan"] != GUIDED
        ]  # the profile-guided plan follows timings
    assert records["local"] == records["ray"] and len(records["local"]) > 2

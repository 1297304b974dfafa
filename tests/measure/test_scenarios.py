"""LoadGen's scenarios: arrivals, a queue kept full, latency counted from arrival, the
rate search; then ``quantship bench`` end to end: its JSON (keys, machine, hashes, raw
samples, cold start) and ``--compare``.

The harness tests run a function that sleeps a known time in place of a model, so the
bounds they assert follow from the sleep alone (no hardware is mocked)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from quantship.backends.base import ThreadQueue
from quantship.errors import QuantshipError
from quantship.measure import scenarios as sc
from quantship.measure.run import ScenarioPlan


def _sleeper(seconds: float, size: int) -> tuple[ThreadQueue, list[int]]:
    """A queue of ``size`` threads whose every run sleeps ``seconds``; the list records
    the highest number running at once."""
    lock, running, peak = threading.Lock(), [0], [0]

    def run() -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(seconds)
        with lock:
            running[0] -= 1

    return ThreadQueue(run, size, f"{size} threads"), peak


def test_arrivals_are_exactly_the_asked_rate() -> None:
    t = sc.arrivals(200.0, 2.0, seed=3)
    assert len(t) == 400 and np.all(np.diff(t) >= 0)
    assert t[0] >= 0 and t[-1] <= 2.0
    np.testing.assert_array_equal(t, sc.arrivals(200.0, 2.0, seed=3))
    gaps = np.diff(t)
    assert 0.7 < gaps.std() / gaps.mean() < 1.3  # exponential-like gaps: CV near 1


def test_offline_keeps_every_request_busy() -> None:
    q, peak = _sleeper(0.01, 3)
    try:
        done, secs = sc.offline(q, 0.3)
    finally:
        q.close()
    assert peak[0] == 3
    assert secs >= 0.3 and 0 < done <= 3 * secs / 0.01 + 3


def test_server_latency_counts_the_wait_for_a_free_request() -> None:
    """One request, 20 ms a query, queries every 10 ms on average: the queue grows, and
    the k-th query cannot finish before (k + 1) · 20 ms, whenever it arrived."""
    q, _ = _sleeper(0.02, 1)
    try:
        lat, secs = sc.server(q, 100.0, 0.5)
    finally:
        q.close()
    assert len(lat) == 50
    assert min(lat) >= 19.0
    assert max(lat) >= 50 * 20 - 500 - 1
    assert secs >= 50 * 0.02


def test_rate_search_stays_under_what_the_model_can_serve() -> None:
    q, _ = _sleeper(0.01, 1)  # at most 100 queries/s
    try:
        best = sc.max_qps_within(q, 40.0, 100.0, 0.2)
    finally:
        q.close()
    assert best is not None and 2.0 <= best < 100.0


def test_scenario_options_are_checked() -> None:
    with pytest.raises(QuantshipError, match="did you mean 'server'"):
        ScenarioPlan(("sever",))
    with pytest.raises(QuantshipError, match="--qps"):
        ScenarioPlan(("server",))
    with pytest.raises(QuantshipError, match="add --scenario server"):
        ScenarioPlan(("offline",), qps=10)
    with pytest.raises(QuantshipError, match="add --scenario server"):
        ScenarioPlan(("single-stream",), latency_bound_ms=5)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quantship", *args], capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_bench_json_and_compare(tmp_path: Path, cnn_path: Path, calib_npz: Path) -> None:
    out = tmp_path / "build"
    p = _cli("export", str(cnn_path), "--calib", str(calib_npz), "--out", str(out), "--no-bench")
    assert p.returncode == 0, p.stderr
    js = tmp_path / "a.json"
    p = _cli(
        "bench", str(out), "--threads", "1", "--iterations", "20", "--json", str(js),
        "--scenario", "single-stream,offline,server", "--qps", "40", "--latency-bound", "500",
        "--scenario-seconds", "0.5", "--percentiles", "50,99.9", "--plot", str(tmp_path / "a.png"),
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "server scenario" in p.stdout and "cold start" in p.stdout
    run = json.loads(js.read_text())
    machine = run["machine"]
    assert machine["cpu"] and machine["cores"] and machine["memory_bytes"] and machine["os"]
    if Path("/proc/cpuinfo").is_file():  # the ISA by /proc/cpuinfo's flag names
        flags = set(Path("/proc/cpuinfo").read_text().split())
        assert set(machine["isa"]) <= flags and ("avx2" in flags) == ("avx2" in machine["isa"])
    assert run["runtimes"]["onnxruntime"] and run["quantship"]
    manifest = json.loads((out / "manifest.json").read_text())
    recorded = {f["path"]: f["sha256"] for f in manifest["artifacts"][0]["files"]}
    (int8,) = [a for a in run["artifacts"] if a["key"] == "onnxruntime:int8"]
    assert int8["files"] == recorded and int8["sha256_verified"]
    rows = {(r["key"], r["scenario"]): r for r in run["results"]}
    single = rows["onnxruntime:int8", "single-stream"]
    assert len(single["samples_ms"]) == single["iterations"] == 20
    assert single["p50_ms"] == pytest.approx(
        float(np.percentile(single["samples_ms"], 50)), abs=2e-4
    )
    assert single["p99.9_ms"] >= single["p50_ms"] > 0 and single["qps"] > 0
    offline = rows["onnxruntime:int8", "offline"]
    assert offline["samples_per_s"] > 0 and offline["queries"] > 0
    server = rows["onnxruntime:int8", "server"]
    assert server["target_qps"] == 40 and server["queries"] == 2 * 10  # two rounds of 0.25 s
    assert len(server["samples_ms"]) == 20 and "p99.9_ms" in server
    assert server["latency_bound_ms"] == 500 and server["max_qps_within_bound"] > 0
    assert {c["key"] for c in run["cold_start"]} == {"onnxruntime:float:fp32", "onnxruntime:int8"}
    assert all(c["load_ms"] > 0 and c["first_run_ms"] > 0 for c in run["cold_start"])
    assert (tmp_path / "a.png").stat().st_size > 1000

    # The same run again on "another machine": the int8 model's files differ there.
    other = json.loads(js.read_text())
    for a in other["artifacts"]:
        if a["key"] == "onnxruntime:int8":
            a["files"] = {k: "0" * 64 for k in a["files"]}
    for r in other["results"]:
        if "p50_ms" in r:
            r["p50_ms"] *= 2
    (tmp_path / "b.json").write_text(json.dumps(other))
    shutil.copy(js, tmp_path / "c.json")
    from quantship.measure.compare import compare
    from quantship.ui import SILENT

    table = compare([js, tmp_path / "b.json", tmp_path / "c.json"], ui=SILENT)
    (row,) = [r for r in table if r["key"] == "onnxruntime:int8" and r["scenario"] == "server"]
    assert row["ratios"] == [pytest.approx(2.0), pytest.approx(1.0)]
    assert row["same_artifact"] is False
    fp32 = [r for r in table if r["key"] == "onnxruntime:float:fp32"]
    assert fp32 and all(r["same_artifact"] for r in fp32)
    p = _cli("bench", "--compare", str(js), str(tmp_path / "b.json"))
    assert p.returncode == 0 and "no: files differ" in p.stdout, p.stderr

    for args, fragment in (
        (("--compare", str(js)), "at least two runs"),
        (("--compare", str(js), str(cnn_path)), "is not JSON"),
        ((str(out), "--scenario", "server"), "--qps"),
        ((str(out), "--scenario", "sever", "--qps", "5"), "did you mean 'server'"),
    ):
        p = _cli("bench", *args)
        assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
        assert fragment in p.stderr, p.stderr

"""Ray for the work that outgrows one machine (the ``ray`` extra; without ``--ray``
everything runs in this process and Ray is never imported).

- ``calibrate_sharded``: calibration split into contiguous shards of the sample range,
  one Ray task each; the tables merge exactly (observers.py: integer counts on aligned
  bins), and the data's sha256 is computed here over every sample in order, as a
  single-process run computes it, so ``calibration.json`` is byte-identical to that
  run's. How it was sharded goes to the manifest, not the table.
- ``map_tasks``: independent evaluations (the accuracy guard's candidate plans, the plan
  search's variants) as Ray tasks, results in submission order.
- ``bench_on``: ``quantship bench`` on the cluster nodes that carry a label (a Ray
  custom resource: ``ray start … --resources '{"amx": 1}'``): the export folder's files
  are shipped to each node and checked there against the manifest's sha256 before
  timing; every node's JSON (its machine record and the label it was chosen by) comes
  back. Nodes run one after another, so two nodes on one host do not share its cores.

Every node must have quantship and the runtimes installed in the Python Ray runs, and,
for calibration, see the data and (for a model with external weights) its weight files
at the same paths.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantship.errors import QuantshipError, closest
from quantship.ui import SILENT, UI

if TYPE_CHECKING:
    from quantship.calibration.data import CalibrationData
    from quantship.calibration.table import CalibrationTable
    from quantship.exporter.load import FloatModel
    from quantship.measure.run import ScenarioPlan
    from quantship.measure.timing import BenchSettings


def connect(address: str) -> Any:
    """``ray.init`` on a running cluster (``auto``: the one this machine belongs to)."""
    try:
        import ray
    except ImportError:
        raise QuantshipError("--ray needs Ray: pip install 'quantship[ray]'") from None
    if ray.is_initialized():
        return ray
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR,
                 configure_logging=False)  # fmt: skip
    except (ConnectionError, RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise QuantshipError(
            f"--ray {address}: no Ray cluster to connect to ({first}); start one with "
            "`ray start --head` or give its address (HOST:PORT)"
        ) from None
    return ray


@dataclass(frozen=True)
class Sharding:
    """How a calibration pass was split: recorded in the manifest."""

    address: str
    shards: int
    workers: int  # CPUs the cluster offered when it started
    samples_per_shard: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"ray": self.address, "shards": self.shards, "cluster_cpus": self.workers,
                "samples_per_shard": list(self.samples_per_shard)}  # fmt: skip


def shard_ranges(total: int, shards: int, align: int = 1) -> list[tuple[int, int]]:
    """``shards`` contiguous (start, stop) ranges covering ``0 … total``, as even as
    possible, each boundary a multiple of ``align`` (a model's fixed batch)."""
    if total <= 0:
        return []
    units = -(-total // align)
    shards = max(1, min(shards, units))
    bounds = [min(total, (units * i // shards) * align) for i in range(shards + 1)]
    return [(a, b) for a, b in itertools.pairwise(bounds) if b > a]


def _calibrate_shard(
    model: FloatModel, data: CalibrationData, start: int, stop: int, histograms: bool
) -> CalibrationTable:
    from quantship.calibration.runner import calibrate

    # One thread: the task holds one CPU of the node, and several tasks share a node.
    return calibrate(model, data, samples=stop - start, start=start, histograms=histograms,
                     threads=1)  # fmt: skip


def data_sha256(data: CalibrationData, samples: int | None) -> tuple[str, int]:
    """The sha256 a single-process calibration records for these samples, and their
    number (the runner hashes each sample as it passes, in order)."""
    from quantship.calibration.runner import hash_feed

    h = hashlib.sha256()
    n = 0
    for feed in data.samples(0, samples):
        hash_feed(h, feed)
        n += 1
    return h.hexdigest(), n


def calibrate_sharded(
    model: FloatModel,
    data: CalibrationData,
    *,
    samples: int | None,
    histograms: bool,
    address: str,
    shards: int | None = None,
    ui: UI = SILENT,
) -> tuple[CalibrationTable, Sharding]:
    """The calibration table of ``samples`` (all if None) samples, computed in Ray tasks
    over contiguous shards and merged; identical to ``calibrate`` in one process."""
    from dataclasses import replace

    ray = connect(address)
    digest, total = data_sha256(data, samples)
    if total == 0:
        raise QuantshipError(f"{data.role} data {data.description} gave no samples to calibrate on")
    cpus = int(ray.cluster_resources().get("CPU", 1))
    ranges = shard_ranges(total, shards or max(1, cpus), model.fixed_batch or 1)
    task = ray.remote(_calibrate_shard).options(num_cpus=1)
    model_ref, data_ref = ray.put(model), ray.put(data)
    pending = [task.remote(model_ref, data_ref, a, b, histograms) for a, b in ranges]
    order = {f: i for i, f in enumerate(pending)}
    done: dict[int, CalibrationTable] = {}
    with ui.progress(f"calibrating on Ray ({len(ranges)} shards)", total) as advance:
        waiting = list(pending)
        while waiting:
            ready, waiting = ray.wait(waiting, num_returns=1)
            for f in ready:
                i = order[f]
                done[i] = ray.get(f)
                advance(ranges[i][1] - ranges[i][0])
    table = done[0]
    for i in range(1, len(ranges)):
        table = table.merge(done[i])
    table = replace(table, data_sha256=digest)
    return table, Sharding(address, len(ranges), cpus, tuple(b - a for a, b in ranges))


def map_tasks(
    fn: Callable[..., Any], args: Sequence[tuple[Any, ...]], address: str, ui: UI = SILENT,
    what: str = "evaluations", cpus: int = 1,
) -> list[Any]:  # fmt: skip
    """``fn(*a)`` for each ``a`` as Ray tasks (``cpus`` CPUs each); results in ``args``'s
    order."""
    ray = connect(address)
    task = ray.remote(fn).options(num_cpus=cpus)
    futures = [task.remote(*a) for a in args]
    out: dict[int, Any] = {}
    index = {f: i for i, f in enumerate(futures)}
    with ui.progress(f"{what} on Ray", len(futures)) as advance:
        waiting = list(futures)
        while waiting:
            ready, waiting = ray.wait(waiting, num_returns=1)
            for f in ready:
                out[index[f]] = ray.get(f)
                advance(1)
    return [out[i] for i in range(len(futures))]


def labelled_nodes(ray: Any, labels: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    """(label, node) for every live node carrying each label, in the labels' order."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    known = sorted({r for n in nodes for r in n.get("Resources", {})
                    if r not in ("CPU", "GPU", "memory", "object_store_memory")
                    and not r.startswith("node:") and not r.startswith("accelerator_type")})  # fmt: skip
    out = []
    for label in labels:
        carrying = [n for n in nodes if n.get("Resources", {}).get(label, 0) > 0]
        if not carrying:
            raise QuantshipError(
                f"--on {label}: no live node of the cluster carries the resource {label!r}; "
                + closest(label, known)
            )
        out += [(label, n) for n in sorted(carrying, key=lambda n: str(n["NodeID"]))]
    return out


def _bench_remote(
    files: dict[str, bytes],
    label: str,
    settings: BenchSettings,
    plan: ScenarioPlan,
    backends: str | None,
    input_shapes: dict[str, tuple[int, ...]] | None,
) -> dict[str, Any]:
    """On the chosen node: write the shipped folder, bench it (the manifest's sha256
    checked before timing) and return the JSON, with the node and its label."""
    import json

    import ray

    from quantship.measure.command import bench

    with tempfile.TemporaryDirectory(prefix="quantship-bench-") as tmp:
        folder = Path(tmp) / "export"
        for rel, data in files.items():
            path = folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        out = Path(tmp) / "bench.json"
        bench(folder, backends=backends, settings=settings, scenarios=plan,
              input_shapes=input_shapes, json_path=out)  # fmt: skip
        run: dict[str, Any] = json.loads(out.read_text())
    run["fleet"] = {"label": label, "node_id": ray.get_runtime_context().get_node_id()}
    return run


def folder_files(folder: Path) -> dict[str, bytes]:
    """Every file the export's manifest lists, and the manifest."""
    from quantship.exporter.manifest import read_manifest, verify_files

    manifest = read_manifest(folder)
    listed = verify_files(folder, manifest)  # nothing changed before it is shipped
    files = {rel: (folder / rel).read_bytes() for rel in sorted(listed)}
    files["manifest.json"] = (folder / "manifest.json").read_bytes()
    return files


def bench_on(
    folder: Path,
    labels: Sequence[str],
    address: str,
    *,
    settings: BenchSettings,
    plan: ScenarioPlan,
    backends: str | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    ui: UI = SILENT,
) -> list[dict[str, Any]]:
    """``bench`` of an export folder on every node carrying each label, one node at a
    time; each node's result JSON with ``fleet: {label, node_id, node_ip}``."""
    if not (folder / "manifest.json").is_file():
        raise QuantshipError(f"--on ships an export folder to the nodes; {folder} is not one "
                             "(it holds no manifest.json)")  # fmt: skip
    ray = connect(address)
    targets = labelled_nodes(ray, labels)
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    files_ref = ray.put(folder_files(folder))
    runs = []
    with ui.progress(f"bench on {len(targets)} node(s)", len(targets)) as advance:
        for label, node in targets:
            strategy = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
            task = ray.remote(_bench_remote).options(
                num_cpus=0, resources={label: 0.001}, scheduling_strategy=strategy
            )
            try:
                run = ray.get(task.remote(files_ref, label, settings, plan, backends, input_shapes))
                run["fleet"]["node_ip"] = node["NodeManagerAddress"]  # as the cluster knows it
                runs.append(run)
            except ray.exceptions.RayTaskError as e:
                cause = e.cause if isinstance(e.cause, QuantshipError) else None
                first = str(cause) if cause is not None else str(e).strip().splitlines()[-1]
                raise QuantshipError(f"bench on node {node['NodeManagerAddress']} "
                                     f"({label}): {first}") from None  # fmt: skip
            advance(1)
    return runs


@contextlib.contextmanager
def local_cluster(
    resources: Sequence[dict[str, float]], cpus_per_node: int = 1, timeout: float = 180
) -> Iterator[str]:
    """A Ray cluster on this machine for tests and benchmarks: a head node with
    ``resources[0]`` and one more node per further entry, ``cpus_per_node`` CPUs each.
    Each ``ray start --block`` runs in a session of its own; on exit every process of
    those sessions (and their descendants) is stopped by its process id: nothing is
    killed by name. Yields the head's address."""
    import json
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    import psutil

    ray_bin = str(Path(sys.executable).parent / "ray")
    tmp = Path(tempfile.mkdtemp(prefix="qsray"))  # Ray's socket paths must stay short
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    address = f"127.0.0.1:{port}"
    common = ["--block", f"--num-cpus={cpus_per_node}", "--node-ip-address=127.0.0.1",
              "--object-store-memory=100000000", "--disable-usage-stats"]  # fmt: skip
    procs: list[subprocess.Popen[bytes]] = []

    def wait_nodes(n: int) -> None:
        code = (f"import ray; ray.init(address={address!r}, log_to_driver=False, "
                "logging_level=40); print(sum(1 for x in ray.nodes() if x['Alive']))")  # fmt: skip
        deadline = time.time() + timeout
        while time.time() < deadline:
            for p in procs:
                if p.poll() is not None:
                    logs = "".join(f.read_text(errors="replace")[-1500:] for f in tmp.glob("*.log"))
                    raise RuntimeError(f"ray start exited with {p.returncode}: {logs}")
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               timeout=timeout)  # fmt: skip
            if r.returncode == 0 and r.stdout.strip().splitlines()[-1:] == [str(n)]:
                return
            time.sleep(1)
        raise RuntimeError(f"the local Ray cluster did not reach {n} node(s) in {timeout:g} s")

    # A throwaway cluster on loopback: no token authentication (Ray 2.60 turns it on
    # once a local ray.init has written ~/.ray/auth_token, and then the nodes started
    # here did not accept connections). Children started meanwhile inherit the setting.
    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    try:
        for i, res in enumerate(resources):
            role = ["--head", f"--port={port}", "--include-dashboard=false",
                    f"--temp-dir={tmp}"] if i == 0 else [f"--address={address}"]  # fmt: skip
            with (tmp / f"node{i}.log").open("wb") as log:
                procs.append(subprocess.Popen(
                    [ray_bin, "start", *role, f"--resources={json.dumps(res)}", *common],
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                ))  # fmt: skip
            wait_nodes(i + 1)
        yield address
    finally:
        leaders = {p.pid for p in procs}
        pids = set(leaders)
        for p in psutil.process_iter():
            with contextlib.suppress(psutil.Error, OSError):
                if os.getsid(p.pid) in leaders:
                    pids.add(p.pid)
        for pid in list(pids):
            with contextlib.suppress(psutil.Error):
                pids |= {c.pid for c in psutil.Process(pid).children(recursive=True)}
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, sig)
            deadline = time.time() + 10
            while time.time() < deadline and any(psutil.pid_exists(p) for p in pids):
                for p in procs:
                    p.poll()  # reap the ray start processes, our children
                time.sleep(0.2)
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        if saved is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved

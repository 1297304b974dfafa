"""The command line: results for good input, one clear line and exit 2 for bad input,
and nothing lost either way."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from models import images

from quantship.cli import main


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quantship", *args], capture_output=True, text=True, timeout=300
    )


def _one_line_error(p: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    lines = [x for x in p.stderr.splitlines() if x.startswith("quantship: error:")]
    assert len(lines) == 1, p.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


def test_export_then_bench(tmp_path: Path, cnn_path: Path, calib_npz: Path) -> None:
    out = tmp_path / "build"
    p = _run(
        "export",
        str(cnn_path),
        "--calib",
        str(calib_npz),
        "--out",
        str(out),
        "--samples",
        "24",
        "--threads",
        "1",
    )
    assert p.returncode == 0, p.stderr
    assert "onnxruntime CPU int8" in p.stdout and "cosine" in p.stdout
    assert "verdict" in p.stderr
    for f in (
        "manifest.json",
        "calibration.json",
        "onnxruntime/model.int8.onnx",
        "float/model.onnx",
    ):
        assert (out / f).is_file(), f
    m = json.loads((out / "manifest.json").read_text())
    (art,) = m["artifacts"]
    assert art["path"] == "onnxruntime/model.int8.onnx"
    assert art["latency"][0]["p50_ms"] > 0
    assert m["calibration"]["samples"] == 24 and m["calibration"]["method"] == "percentile"
    assert m["input_model"]["sha256"] and m["versions"]["onnxruntime"]

    js = tmp_path / "bench.json"
    plot = tmp_path / "bench.png"
    p = _run(
        "bench",
        str(out),
        "--batch",
        "1,4",
        "--threads",
        "1",
        "--iterations",
        "5",
        "--json",
        str(js),
        "--plot",
        str(plot),
        "--scenario-seconds",
        "0.4",
    )
    assert p.returncode == 0, p.stderr
    rows = json.loads(js.read_text())["results"]
    res = [r for r in rows if r["scenario"] == "single-stream"]
    # by default also the offline scenario, at each batch size
    assert {(r["key"], r["batch"]) for r in rows if r["scenario"] == "offline"} == {
        (k, b) for k in ("onnxruntime:float:fp32", "onnxruntime:int8") for b in (1, 4)
    }
    assert {(r["label"], r["batch"]) for r in res} == {
        ("onnxruntime CPU fp32 (default)", 1),
        ("onnxruntime CPU fp32 (default)", 4),
        ("onnxruntime CPU int8", 1),
        ("onnxruntime CPU int8", 4),
    }
    assert all(r["iterations"] == 5 and r["p50_ms"] > 0 for r in res)
    assert plot.stat().st_size > 1000


def test_bench_a_model_file(tmp_path: Path, cnn_path: Path) -> None:
    js = tmp_path / "b.json"
    p = _run(
        "bench",
        str(cnn_path),
        "--backend",
        "onnxruntime",
        "--batch",
        "1,2",
        "--threads",
        "1",
        "--iterations",
        "3",
        "--json",
        str(js),
        "--scenario",
        "single-stream",
    )
    assert p.returncode == 0, p.stderr
    assert len(json.loads(js.read_text())["results"]) == 2


def test_bench_dynamic_sequence_length(tmp_path: Path) -> None:
    """A model whose sequence axis is dynamic is timed at the calibration sample's
    length, or at the length asked for; a shape that contradicts the model is one line."""
    sys.path.insert(0, str(Path(__file__).parent / "corpus"))
    import families

    fam = families.build("where_mask", tmp_path)
    out = tmp_path / "build"
    p = _run("export", str(fam.model), "--calib", str(fam.calib), "--out", str(out), "--no-bench")
    assert p.returncode == 0, p.stderr
    for extra, want in (
        ((), [1, 16, 32]),
        (("--input-shape", "x=1x64x32", "--input-shape", "mask=1x64"), [1, 64, 32]),
    ):
        js = tmp_path / "b.json"
        p = _run("bench", str(out), "--iterations", "3", "--throughput-seconds", "0",
                 "--json", str(js), *extra)  # fmt: skip
        assert p.returncode == 0, p.stderr
        assert json.loads(js.read_text())["input_shapes"]["x"] == want
    p = _run("bench", str(out), "--iterations", "3", "--input-shape", "x=1x64x31")
    _one_line_error(p, "x=1x64x31", "dimension 2", "fixed at 32")


def test_calib_cache_reuse(tmp_path: Path, cnn_path: Path, calib_npz: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert (
        main(
            [
                "export",
                str(cnn_path),
                "--calib",
                str(calib_npz),
                "--out",
                str(a),
                "--no-bench",
                "-q",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "export",
                str(cnn_path),
                "--calib-cache",
                str(a / "calibration.json"),
                "--held-out",
                str(calib_npz),
                "--out",
                str(b),
                "--no-bench",
                "-q",
            ]
        )
        == 0
    )
    assert (a / "onnxruntime/model.int8.onnx").read_bytes() == (
        b / "onnxruntime/model.int8.onnx"
    ).read_bytes()


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["export", "{tmp}/missing.onnx", "--calib", "{calib}", "--out", "{tmp}/o"], ["not found"]),
        (
            [
                "export",
                "{model}",
                "--calib",
                "{calib}",
                "--out",
                "{tmp}/o",
                "--backend",
                "tensorrtx",
            ],
            ["unknown backend 'tensorrtx'", "did you mean 'tensorrt'?"],
        ),
        (["export", "{model}", "--calib", "{tmp}/nope.npz", "--out", "{tmp}/o"], ["not found"]),
        (
            ["export", "{model}", "--calib", "{bad_calib}", "--out", "{tmp}/o"],
            ["shape (3, 8, 8) per sample", "expects", "(3, 16, 16)"],
        ),
        (
            ["export", "{corrupt}", "--calib", "{calib}", "--out", "{tmp}/o"],
            ["not a readable ONNX model"],
        ),
        (["export", "{model}", "--out", "{tmp}/o"], ["--calib"]),
        (["bench", "{tmp}"], ["holds no manifest.json; pass an export output folder or an .onnx"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, cnn_path: Path, calib_npz: Path, args: list[str], fragments: list[str]
) -> None:
    np.savez(tmp_path / "bad.npz", images=np.zeros((4, 3, 8, 8), np.float32))
    (tmp_path / "corrupt.onnx").write_bytes(b"garbage" * 20)
    subs = {
        "{tmp}": str(tmp_path),
        "{calib}": str(calib_npz),
        "{model}": str(cnn_path),
        "{bad_calib}": str(tmp_path / "bad.npz"),
        "{corrupt}": str(tmp_path / "corrupt.onnx"),
    }
    argv = []
    for a in args:
        for k, v in subs.items():
            a = a.replace(k, v)
        argv.append(a)
    p = _run(*argv)
    _one_line_error(p, *fragments)
    assert not (tmp_path / "o").exists()


def test_failed_export_leaves_the_earlier_result_intact(
    tmp_path: Path, cnn_path: Path, calib_npz: Path
) -> None:
    out = tmp_path / "build"
    assert (
        main(
            [
                "export",
                str(cnn_path),
                "--calib",
                str(calib_npz),
                "--out",
                str(out),
                "--no-bench",
                "-q",
            ]
        )
        == 0
    )
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    x = images(8)
    x[5, 0, 0, 0] = np.inf
    np.savez(tmp_path / "inf.npz", images=x)
    p = _run(
        "export",
        str(cnn_path),
        "--calib",
        str(tmp_path / "inf.npz"),
        "--out",
        str(out),
        "--no-bench",
    )
    _one_line_error(p, "sample 5", "contains Inf")
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert not [p for p in tmp_path.iterdir() if "staging" in p.name]


def test_refuses_to_replace_a_folder_it_did_not_make(
    tmp_path: Path, cnn_path: Path, calib_npz: Path
) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    p = _run("export", str(cnn_path), "--calib", str(calib_npz), "--out", str(out))
    _one_line_error(p, "not a quantship output")
    assert (out / "notes.txt").read_text() == "precious"


def test_missing_backend_runtime_reports_and_others_complete(
    tmp_path: Path, cnn_path: Path, calib_npz: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from quantship.backends.onnxruntime import OnnxRuntimeBackend

    class Unavailable(OnnxRuntimeBackend):
        name = "fakert"
        extra = "fakert"

        def available(self) -> str | None:
            return "FakeRT is not installed"

    from quantship.backends import registry

    real_get = registry.get
    monkeypatch.setattr(registry, "get", lambda n: Unavailable() if n == "fakert" else real_get(n))
    out = tmp_path / "o"
    code = main(
        [
            "export",
            str(cnn_path),
            "--calib",
            str(calib_npz),
            "--out",
            str(out),
            "--backend",
            "onnxruntime,fakert",
            "--no-bench",
            "-q",
        ]
    )
    assert code == 2
    m = json.loads((out / "manifest.json").read_text())
    assert [a["backend"] for a in m["artifacts"]] == ["onnxruntime"]
    assert "FakeRT is not installed" in m["failures"][0]
    assert "quantship[fakert]" in m["failures"][0]


def test_help_and_version() -> None:
    p = _run("--help")
    assert p.returncode == 0 and "export" in p.stdout and "bench" in p.stdout
    p = _run("--version")
    assert p.returncode == 0 and p.stdout.startswith("quantship ")
    from quantship.backends import registry

    listed = {line.split()[0].rstrip(":") for line in p.stdout.splitlines()}
    assert set(registry.names()) | {"python", "onnx", "numpy"} <= listed, p.stdout


def test_bench_refuses_a_file_that_changed(tmp_path: Path, cnn_path: Path, calib_npz: Path) -> None:
    """bench checks every file against the sha256 the manifest records, before timing."""
    out = tmp_path / "build"
    assert _run("export", str(cnn_path), "--calib", str(calib_npz), "--out", str(out),
                "--no-bench").returncode == 0  # fmt: skip
    model = out / "onnxruntime" / "model.int8.onnx"
    model.write_bytes(model.read_bytes() + b"\0")
    p = _run("bench", str(out), "--iterations", "3")
    _one_line_error(p, "model.int8.onnx", "does not match the sha256")


def test_every_flag_of_every_command_has_help_and_its_default() -> None:
    """Walks the parser: each argument has help text; each optional one that is not a
    switch says its default (or when it is required) in the help that is printed."""
    import argparse

    from quantship.cli_parser import build_parser, subcommands

    missing, no_default = [], []
    for name, sp in subcommands(build_parser()).items():
        formatter = sp._get_formatter()
        for a in sp._actions:
            if isinstance(a, argparse._HelpAction) or a.help == argparse.SUPPRESS:
                continue  # --help, and old names kept for a release (hidden)
            flag = f"{name} {'/'.join(a.option_strings) or a.dest}"
            if not a.help:
                missing.append(flag)
                continue
            shown = formatter._get_help_string(a) or ""
            says = "default" in shown or "required" in shown  # "required unless ..."
            if a.option_strings and a.nargs != 0 and not a.required and not says:
                no_default.append(flag)
        text = sp.format_help()
        assert "%(default)" not in text and "(default: none) (default" not in text, name
    assert not missing, f"flags without help: {missing}"
    from quantship.calibration.methods import METHODS
    from quantship.cli_parser import METHODS as CLI_METHODS

    assert CLI_METHODS == METHODS
    assert not no_default, f"flags whose help does not show the default: {no_default}"


def test_sensitivity_refuses_a_list_of_backends(
    tmp_path: Path, cnn_path: Path, calib_npz: Path
) -> None:
    pytest.importorskip("openvino", reason="openvino is not installed")
    p = _run("sensitivity", str(cnn_path), "--calib", str(calib_npz), "--out",
             str(tmp_path / "o"), "--backend", "onnxruntime,openvino")  # fmt: skip
    _one_line_error(p, "sensitivity probes one backend's plan", "run it once for each")
    assert not (tmp_path / "o").exists()


def test_build_engine_hints_only_what_it_accepts(tmp_path: Path) -> None:
    p = _run("build-engine", str(tmp_path))
    _one_line_error(p, "holds no manifest.json; pass an export output folder")
    assert ".onnx" not in p.stderr  # it does not take a model file


def test_config_file_sets_export_options_and_flags_override_it(
    tmp_path: Path, cnn_path: Path, calib_npz: Path
) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text(
        f'[export]\nmodel = "{cnn_path}"\ncalib = "{calib_npz.name}"\nout = "from-file"\n'
        'samples = 24\nmethod = "minmax"\nkeep-float = ["fcc"]\nbench = false\n'
    )
    p = _run("export", "--config", str(toml), "--samples", "16", "-q")
    # the file's list reached export, whose check names the closest node
    _one_line_error(p, "--keep-float 'fcc': the model has no such node", "did you mean 'fc'")
    # flags override the file: a scalar (--out, --samples) and a list (--keep-float)
    p = _run("export", "--config", str(toml), "--samples", "16", "--keep-float", "fc",
             "--out", str(tmp_path / "flag"), "-q")  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert not (tmp_path / "from-file").exists()
    m = json.loads((tmp_path / "flag/manifest.json").read_text())
    assert m["calibration"]["method"] == "minmax"  # from the file
    conf = m["configuration"]
    assert conf["samples"] == 16 and conf["method"] == "minmax" and conf["bench"] is False
    assert conf["float_nodes"] == ["fc"]
    assert conf["calib"] == str(calib_npz.resolve())  # relative to the file, recorded whole


@pytest.mark.parametrize(
    ("table", "fragments"),
    [
        (
            "[export]\nsampels = 3\n",
            ["unknown key 'sampels' in [export]", "did you mean 'samples'"],
        ),
        ('[export]\nmethod = "minmaxx"\n', ["[export] method", "not one of"]),
        ('[export]\nsamples = "many"\n', ["[export] samples", "expected a positive integer"]),
        ("[export]\nbench = 1\n", ["[export] bench must be true or false"]),
        ("[benhc]\nbatch = 1\n", ["unknown table(s) ['benhc']", "the tables are [export]"]),
    ],
)
def test_config_file_mistakes_are_one_line(
    tmp_path: Path, table: str, fragments: list[str]
) -> None:
    (tmp_path / "c.toml").write_text(table)
    p = _run("export", "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "o"))
    _one_line_error(p, *fragments)
    assert not (tmp_path / "o").exists()


def test_bench_reads_its_table_from_a_config_file(
    tmp_path: Path, cnn_path: Path, calib_npz: Path
) -> None:
    (tmp_path / "b.toml").write_text(
        '[bench]\nbatch = "1,2"\nduration = 0.2\nwarmup = 1\nscenario = "single-stream"\n'
        'json = "out.json"\n'
    )
    p = _run("bench", str(cnn_path), "--config", str(tmp_path / "b.toml"), "--batch", "2", "-q")
    assert p.returncode == 0, p.stderr
    runs = json.loads((tmp_path / "out.json").read_text())  # the file's path, beside it
    assert {r["batch"] for r in runs["results"]} == {2}, runs["results"]


def test_replay_repeats_a_recorded_export(tmp_path: Path, cnn_path: Path, calib_npz: Path) -> None:
    first = tmp_path / "first"
    assert _run("export", str(cnn_path), "--calib", str(calib_npz), "--out", str(first),
                "--samples", "16", "--method", "minmax", "--no-bench", "-q").returncode == 0  # fmt: skip
    again = tmp_path / "again"
    p = _run("export", "--replay", str(first / "manifest.json"), "--out", str(again), "-q")
    assert p.returncode == 0, p.stderr
    a, b = (json.loads((d / "manifest.json").read_text()) for d in (first, again))
    assert a["configuration"] == b["configuration"]  # no out: a manifest moves with its folder
    for art_a, art_b in zip(a["artifacts"], b["artifacts"], strict=True):
        assert art_a["sha256"] == art_b["sha256"]  # the same bytes
    p = _run("export", "--replay", str(tmp_path / "nope.json"))
    _one_line_error(p, "--replay", "not found")


def test_replay_refuses_a_run_made_of_objects(tmp_path: Path, cnn_path: Path) -> None:
    import onnx

    from quantship import api

    api.export(onnx.load(str(cnn_path)), images(16), tmp_path / "o", bench=False)
    p = _run("export", "--replay", str(tmp_path / "o/manifest.json"), "--out", str(tmp_path / "r"))
    _one_line_error(p, "given Python objects (calib, model)", "only paths and values")


def test_shell_completion_is_made_from_the_parser(tmp_path: Path) -> None:
    import shutil

    p = _run("completion", "bash")
    assert p.returncode == 0 and "complete -o filenames -F _quantship quantship" in p.stdout
    z = _run("completion", "zsh")
    assert z.returncode == 0 and z.stdout.startswith("autoload -U +X bashcompinit")
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed: the script was written, not run")
    (tmp_path / "qs.bash").write_text(p.stdout)

    def complete(*words: str) -> list[str]:
        line = " ".join(f'"{w}"' for w in words)
        code = (f"source {tmp_path / 'qs.bash'}; COMP_WORDS=({line}); "
                f"COMP_CWORD={len(words) - 1}; _quantship; printf '%s\\n' \"${{COMPREPLY[@]}}\"")  # fmt: skip
        r = subprocess.run(["bash", "-c", code], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        return r.stdout.split()

    assert complete("quantship", "ex") == ["export"]
    assert complete("quantship", "export", "--meth") == ["--method"]
    assert complete("quantship", "export", "--method", "") == [
        "minmax",
        "percentile",
        "entropy",
        "mse",
    ]
    assert "onnxruntime" in complete("quantship", "bench", "--backend", "")
    assert complete("quantship", "distill", "--da") == []  # an old name, kept but not offered
    assert "--train" in complete("quantship", "distill", "--tr")


def test_one_config_file_serves_export_and_bench(
    tmp_path: Path, cnn_path: Path, calib_npz: Path
) -> None:
    (tmp_path / "run.toml").write_text(
        f'[export]\nmodel = "{cnn_path.name}"\ncalib = "calib.npz"\nout = "build"\nbench = false\n'
        "mean = [0.5, 0.5, 0.5]\n\n"  # a comma-separated option as a TOML list of numbers
        '[bench]\nbatch = [1, 2]\nduration = 0.2\nwarmup = 1\nscenario = "single-stream"\n'
        'json = "b.json"\n'
    )
    # an unambiguous prefix of --config is --config, as argparse reads it
    assert _run("export", "--conf", str(tmp_path / "run.toml"), "-q").returncode == 0
    p = _run("bench", str(tmp_path / "build"), "--config", str(tmp_path / "run.toml"), "-q")
    assert p.returncode == 0, p.stderr
    runs = json.loads((tmp_path / "b.json").read_text())
    assert {r["batch"] for r in runs["results"]} == {1, 2}


def test_replay_takes_no_other_option(tmp_path: Path, cnn_path: Path, calib_npz: Path) -> None:
    first = tmp_path / "first"
    assert _run("export", str(cnn_path), "--calib", str(calib_npz), "--out", str(first),
                "--no-bench", "-q").returncode == 0  # fmt: skip
    p = _run("export", "--replay", str(first / "manifest.json"), "--backend", "openvino",
             "--out", str(tmp_path / "b"))  # fmt: skip
    _one_line_error(p, "only --out may be given beside it, not --backend")
    assert not (tmp_path / "b").exists()

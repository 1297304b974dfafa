"""The command line's grammar: every subcommand, its options, and the parsers that
turn option text into values (one clear line for each malformed value)."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any

from quantship import __version__
from quantship.backends import DEFAULT_BACKEND
from quantship.measure import DEFAULT_SCENARIO_SECONDS, DEFAULT_SCENARIOS

EPILOG_EXPORT = """\
calibration data (--calib, --held-out):
  file.npz                one array per model input, keyed by input name, first axis = samples
  file.npy                one array, for a one-input model
  folder/                 images (jpg, png, ...), resized and normalised (see image options)
  sentences.txt           text, one sentence a line, tokenized with --tokenizer DIR into
                          input_ids / attention_mask / token_type_ids
  package.module:function returns an iterable of feeds: dicts of arrays (or arrays)

examples:
  quantship export model.onnx --calib calib.npz --out build/
  quantship export model.onnx --calib images/ --image-size 320 --method entropy --samples 256 --out build/
  quantship export encoder.onnx --calib sentences.txt --tokenizer my-tokenizer/ --pooling mean --out build/
  quantship export mypkg.nets:resnet --weights net.pt --calib calib.npz --out build/
"""


def _shape_arg(text: str) -> tuple[str, tuple[int, ...]]:
    name, sep, dims = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=1x3x224x224, got {text!r}")
    try:
        shape = tuple(int(d) for d in dims.replace(",", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"dimensions must be integers: {text!r}") from None
    if not shape or any(d < 1 for d in shape):
        raise argparse.ArgumentTypeError(f"dimensions must be positive integers: {text!r}")
    return name, shape


def _profile_arg(text: str) -> tuple[str, tuple[list[int], list[int], list[int]]]:
    name, sep, spec = text.partition("=")
    parts = spec.split(":")
    if not sep or not name or len(parts) != 3:
        raise argparse.ArgumentTypeError(
            f"expected NAME=MIN:OPT:MAX (e.g. x=1x16:1x128:8x384), got {text!r}"
        )
    shapes = [_shape_arg(f"{name}={p}")[1] for p in parts]
    return name, (list(shapes[0]), list(shapes[1]), list(shapes[2]))


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def _ints(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"values must be >= 1, got {text!r}")
    return vals


def _size(text: str) -> tuple[int, int]:
    try:
        parts = [int(v) for v in text.lower().replace(",", "x").split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}")
    return parts[0], parts[1]


def _lr(text: str) -> float | None:
    """A learning rate, or ``auto`` (None)."""
    if text == "auto":
        return None
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or auto, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"the learning rate must be positive, got {text}")
    return v


def _names(text: str) -> tuple[str, ...]:
    """A comma-separated list of names."""
    out = tuple(x.strip() for x in text.split(",") if x.strip())
    if not out:
        raise argparse.ArgumentTypeError(f"expected names separated by commas, got {text!r}")
    return out


def _count(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return v


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _run_target_args(p: argparse.ArgumentParser, optional: bool = False) -> None:
    """What ``bench`` and ``profile`` run, on what inputs, with how many threads."""
    if optional:
        p.add_argument("target", nargs="?", help="an export output folder, or a model.onnx")
    else:
        p.add_argument("target", help="an export output folder, or a model.onnx")
    p.add_argument(
        "--backend",
        help="for a folder: only these backends (default: every backend in it); for a model: "
        f"run it in these (default: {DEFAULT_BACKEND})",
    )
    p.add_argument("--threads", type=_positive, help="CPU threads (default: the runtime's)")
    p.add_argument(
        "--data",
        metavar="DATA",
        help="feed a real sample instead of random inputs (.npz, .npy, images, text) "
        "(default: random inputs of the model's shapes)",
    )
    p.add_argument(
        "--tokenizer", type=Path, metavar="DIR", help="for text --data: a local tokenizer folder"
    )
    p.add_argument(
        "--input-shape",
        action="append",
        type=_shape_arg,
        default=[],
        metavar="NAME=1x128",
        help="sizes of an input's dynamic dimensions, e.g. a sequence length (repeatable; "
        "default: the calibration sample's)",
    )


class _Help(argparse.RawDescriptionHelpFormatter):
    """Every flag's help ends with its default: the value argparse holds, or "none" for
    an option that is off (or a list that is empty) unless given. A help text that says
    its default in words (because it is derived) is left as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if text == argparse.SUPPRESS:
            return text
        if (
            not action.option_strings
            or action.required
            or action.nargs == 0  # a switch (store_true, --version, --help)
            or "default" in text
            or "required" in text
        ):
            return text
        d = action.default
        if d is None or d == [] or d == ():
            return f"{text} (default: none)"
        if isinstance(d, (tuple, list)):
            return f"{text} (default: {','.join(map(str, d))})"
        return f"{text} (default: %(default)s)"


class _Deprecated(argparse.Action):
    """An old flag name, kept for one release: it stores into its new flag's ``dest``
    (``prefix`` put before the value) and leaves a line saying what to use instead in
    ``namespace.deprecations``. Hidden from --help."""

    def __init__(self, option_strings: list[str], dest: str, *, new: str, prefix: str = "",
                 append: bool = False, **kw: Any) -> None:  # fmt: skip
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kw)
        self.new, self.prefix, self.append = new, prefix, append

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
        option_string: str | None = None,
    ) -> None:  # fmt: skip
        notes = list(getattr(namespace, "deprecations", None) or [])
        notes.append(f"{option_string} is deprecated and goes in the next release: use {self.new}")
        namespace.deprecations = notes
        value = f"{self.prefix}{values}" if self.prefix else values
        if self.append:
            setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or []), value])
        else:
            setattr(namespace, self.dest, value)


class _Versions(argparse.Action):
    """``--version``: quantship's, then each backend's runtime (or why it is missing),
    then the libraries an export uses: what a bug report needs."""

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        import platform
        from importlib import metadata

        from quantship.backends import registry

        lines = [f"quantship {__version__}", f"python {platform.python_version()}"]
        for name in registry.names():
            b = registry.get(name)
            reason = b.available()
            lines.append(f"{name} {b.version()}" if reason is None else f"{name}: {reason}")
        for pkg in ("onnx", "numpy", "torch", "nncf", "onnxslim", "ray"):
            try:
                lines.append(f"{pkg} {metadata.version(pkg)}")
            except metadata.PackageNotFoundError:
                lines.append(f"{pkg}: not installed")
        print("\n".join(lines))
        parser.exit()


# calibration.methods.METHODS, spelt here so that --help needs no numpy (a test holds
# the two equal)
METHODS = ("minmax", "percentile", "entropy", "mse")


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Each command's own parser, by name."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="quantship",
        description="Take a trained network to INT8 for real inference runtimes, and measure it there.",
    )
    p.add_argument(
        "--version",
        action=_Versions,
        nargs=0,
        help="print the versions of quantship, Python and every runtime, and exit",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser = functools.partial(sub.add_parser, formatter_class=_Help)  # type: ignore[method-assign]

    e = sub.add_parser(
        "export",
        help="calibrate once and write INT8 artifacts for each backend",
        epilog=EPILOG_EXPORT,
    )
    e.add_argument(
        "model", nargs="?", help="model.onnx, package.module:factory, or a torch.export .pt2 file"
    )
    e.add_argument(
        "--config",
        type=Path,
        metavar="TOML",
        help="options from this file's [export] table (keys named as the flags), and a "
        "[distill] table run first; flags given here override the file (default: none)",
    )
    e.add_argument(
        "--replay",
        type=Path,
        metavar="MANIFEST",
        help="repeat the export an earlier manifest.json records, into --out or its own "
        "folder (default: none)",
    )
    e.add_argument(
        "--calib",
        metavar="DATA",
        help="calibration data, see below (required unless --calib-cache)",
    )
    e.add_argument(
        "--out", metavar="DIR", type=Path, help="output folder (required without --config)"
    )
    e.add_argument(
        "--backend",
        default=DEFAULT_BACKEND,
        help="backend(s), comma-separated",
    )
    e.add_argument(
        "--method",
        default="percentile",
        choices=METHODS,
        help="activation range method (default: percentile)",
    )
    e.add_argument(
        "--percentile", type=float, default=99.99, help="for --method percentile (default: 99.99)"
    )
    e.add_argument(
        "--samples",
        type=_positive,
        metavar="N",
        help="use at most N calibration samples (default: 256)",
    )
    e.add_argument(
        "--held-out",
        metavar="DATA",
        help="data for fidelity (default: calibration samples not used)",
    )
    e.add_argument(
        "--calib-cache",
        metavar="FILE",
        help="reuse a calibration.json instead of a data pass (default: a pass over --calib)",
    )
    e.add_argument(
        "--tokenizer",
        type=Path,
        metavar="DIR",
        help="for text data (one sentence a line): a local Hugging Face tokenizer folder "
        "(tokenizer.json or vocab.txt); nothing is downloaded",
    )
    e.add_argument(
        "--input-shape",
        action="append",
        type=_shape_arg,
        default=[],
        metavar="NAME=1x3x224x224",
        help="fix an input's shape (repeatable) (default: the model's, its dynamic dimensions "
        "from the first calibration sample)",
    )
    e.add_argument(
        "--weights", metavar="FILE", help="state dict for a package.module:factory model"
    )
    e.add_argument(
        "--keep-float",
        action="append",
        default=[],
        metavar="NODE|op:TYPE|re:REGEX",
        help="leave in float: a node by name, every node of an op type (op:Softmax), or the "
        "nodes whose whole name matches a regular expression (re:head/.*) (repeatable)",
    )
    e.add_argument("--exclude", action=_Deprecated, dest="keep_float", new="--keep-float re:REGEX",
                   prefix="re:", append=True)  # fmt: skip
    e.add_argument("--exclude-op", action=_Deprecated, dest="keep_float",
                   new="--keep-float op:TYPE", prefix="op:", append=True)  # fmt: skip
    e.add_argument(
        "--plan",
        default="rules",
        metavar="NAME",
        help="'rules' (the backend's rule table), 'search' (build each plan variant the "
        "runtime's kernels tell apart, measure them here, keep the fastest within the "
        "budget; cached per model, runtime and CPU), or a variant's name (default: rules)",
    )
    e.add_argument(
        "--algorithms",
        default=None,
        metavar="LIST",
        help="pre-quantization algorithms, comma-separated: cle (cross-layer equalization), "
        "smoothquant (the activations of matrix products with weights), adaround (learned "
        "weight rounding, needs torch), bias-correction; or a preset: none, auto "
        "(smoothquant for models with attention blocks; the default)",
    )
    e.add_argument(
        "--max-drop",
        type=float,
        metavar="X",
        help="accuracy budget on 1 - cosine: return the most sensitive layers to float until "
        "it holds (default: none, no guard; the verdict's budget is cosine >= 0.999)",
    )
    e.add_argument(
        "--metric",
        metavar="PKG.MOD:FN",
        help="with --max-drop: a task metric fn(outputs, labels) -> score; labels: 'labels' in --held-out",
    )
    e.add_argument(
        "--pooling",
        choices=["mean", "cls"],
        help="for encoders: also measure sentence embeddings (the (batch, tokens, hidden) "
        "output pooled over the attention mask, or at the first token): their cosine and "
        "how often each held-out sample keeps its nearest neighbour (default: off)",
    )
    e.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="shard calibration over this Ray cluster (HOST:PORT, or auto); the table is "
        "identical to a single-process run's (default: this process only)",
    )
    e.add_argument(
        "--threads",
        type=_positive,
        help="CPU threads for fidelity and latency runs (default: the runtime's)",
    )
    e.add_argument("--no-bench", action="store_true", help="skip the closing latency measurement")
    e.add_argument(
        "--require-engine",
        action="store_true",
        help="with --backend tensorrt: fail unless the TensorRT engine can be built here",
    )
    e.add_argument("--quiet", "-q", action="store_true", help="print only errors")
    img = e.add_argument_group("image options (when DATA is a folder of images)")
    img.add_argument(
        "--image-size", type=_size, metavar="N|HxW", help="resize to (default: the model's)"
    )
    img.add_argument(
        "--mean", type=_floats, default=(0.0,), help="per-channel mean, after --scale (default 0)"
    )
    img.add_argument(
        "--std", type=_floats, default=(1.0,), help="per-channel std, after --scale (default 1)"
    )
    img.add_argument(
        "--scale", type=float, default=1 / 255, help="pixel multiplier (default 1/255)"
    )
    img.add_argument(
        "--channel-order", choices=["RGB", "BGR"], default="RGB", help="channel order fed"
    )
    img.add_argument(
        "--layout",
        choices=["NCHW", "NHWC"],
        help="tensor layout (default: from the model's input shape)",
    )

    b = sub.add_parser(
        "bench", help="measure latency: an export folder (float vs INT8) or one model"
    )
    _run_target_args(b, optional=True)
    b.add_argument(
        "--batch", type=_ints, default=(1,), metavar="1,8", help="batch sizes (default: 1)"
    )
    b.add_argument(
        "--lengths",
        type=_ints,
        default=(),
        metavar="16,64,128,384",
        help="sizes for every dynamic dimension other than the batch (sequence lengths), each "
        "measured in turn (default: the sample's, or --input-shape)",
    )
    b.add_argument("--warmup", type=int, default=10, help="warm-up runs per model (default: 10)")
    b.add_argument(
        "--warmup-seconds", type=float, default=0.0, help="and warm up at least this long"
    )
    b.add_argument(
        "--iterations", type=_positive, help="measured runs per model (default: by --duration)"
    )
    b.add_argument(
        "--duration",
        type=float,
        default=10.0,
        help="seconds of single-stream measurement per batch size (default: 10)",
    )
    b.add_argument(
        "--scenario",
        type=_names,
        default=DEFAULT_SCENARIOS,
        metavar="single-stream,offline,server",
        help="MLPerf LoadGen's scenarios: single-stream (next query when the previous ends; "
        "p50/p90/p99), offline (all samples at once, the runtime's requests kept full; "
        "throughput), server (Poisson arrivals at --qps; latency percentiles) "
        "(default: single-stream,offline)",
    )
    b.add_argument(
        "--scenario-seconds",
        type=float,
        default=DEFAULT_SCENARIO_SECONDS,
        metavar="S",
        help="seconds per model of the offline and server scenarios (default: 4)",
    )
    b.add_argument(
        "--qps",
        type=float,
        help="the server scenario's arrival rate, queries/s (required with --scenario server)",
    )
    b.add_argument(
        "--latency-bound",
        type=float,
        metavar="MS",
        help="server scenario: also find the highest rate whose p99 stays under MS",
    )
    b.add_argument(
        "--streams",
        type=_positive,
        help="parallel requests in the offline and server scenarios (default: the runtime's "
        "own: OpenVINO's optimal number of infer requests, 1 thread for ONNX Runtime)",
    )
    b.add_argument(
        "--percentiles",
        type=_floats,
        default=(50.0, 90.0, 99.0),
        metavar="50,90,99",
        help="latency percentiles to report (default: 50,90,99)",
    )
    b.add_argument(
        "--throughput-seconds",
        type=float,
        help="deprecated: --scenario-seconds (0: single-stream only) (default: none, "
        "--scenario-seconds)",
    )
    b.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="a Ray cluster (HOST:PORT, or auto) whose labelled nodes run the bench (with --on) "
        "(default: none, this machine)",
    )
    b.add_argument(
        "--on",
        type=_names,
        metavar="LABEL[,LABEL]",
        help="bench on every node of the --ray cluster carrying each of these custom "
        "resources (ray start --resources '{\"amx\": 1}'); results gathered into one table "
        "and one JSON",
    )
    b.add_argument(
        "--compare",
        nargs="+",
        type=Path,
        metavar="RUN.json",
        help="print these bench --json results side by side (the same models across runs or "
        "machines), with ratios to the first",
    )
    b.add_argument("--json", type=Path, metavar="FILE", help="write results as JSON")
    b.add_argument(
        "--plot", type=Path, metavar="FILE.png", help="draw the latency distributions (CDFs)"
    )
    b.add_argument(
        "--config",
        type=Path,
        metavar="TOML",
        help="options from this file's [bench] table (keys named as the flags); flags given "
        "here override the file (default: none)",
    )
    b.add_argument("--quiet", "-q", action="store_true", help="print only errors")

    pr = sub.add_parser(
        "profile",
        help="per-layer kernels and times (the runtime's own profiler): float beside INT8",
    )
    _run_target_args(pr)
    pr.add_argument("--batch", type=_positive, default=1, help="batch size (default: 1)")
    pr.add_argument(
        "--runs", type=_positive, default=50, help="profiled runs, averaged (default: 50)"
    )
    pr.add_argument(
        "--top", type=int, default=10, help="slowest layers listed per model (default: 10; 0: none)"
    )
    pr.add_argument("--json", type=Path, metavar="FILE", help="write every layer as JSON")
    pr.add_argument("--quiet", "-q", action="store_true", help="print only errors")

    c = sub.add_parser("check", help="check a QDQ model against a runtime's quantization rules")
    c.add_argument("runtime", help="whose rules: a backend with a validator (tensorrt)")
    c.add_argument("model", type=Path, help="a QDQ .onnx model")
    c.add_argument("--quiet", "-q", action="store_true", help="print only errors")

    be = sub.add_parser(
        "build-engine", help="build the TensorRT engine of an export folder, on the target GPU"
    )
    be.add_argument("folder", type=Path, help="an export output folder with a tensorrt artifact")
    be.add_argument("--max-batch", type=_positive, default=32, help="largest batch of the profile")
    be.add_argument(
        "--shapes",
        action="append",
        type=_profile_arg,
        default=[],
        metavar="NAME=MIN:OPT:MAX",
        help="an input's shape profile, e.g. input_ids=1x16:1x128:8x384 (repeatable; default: "
        "batch 1 to --max-batch, other dynamic dimensions over the calibrated sizes)",
    )
    be.add_argument(
        "--float-layers",
        choices=["fp16", "fp32"],
        help="precision of the layers left float (default: fp16 where the GPU has fast fp16, "
        "as trtexec --int8 --fp16)",
    )
    be.add_argument("--quiet", "-q", action="store_true", help="print only errors")

    ds = sub.add_parser("distill", help="train a smaller student from a teacher (torch)")
    ds.add_argument(
        "--teacher",
        required=True,
        metavar="PKG.MOD:FACTORY",
        help="a function returning the teacher nn.Module",
    )
    ds.add_argument("--teacher-weights", metavar="FILE", help="state dict of the trained teacher")
    ds.add_argument(
        "--student",
        required=True,
        metavar="PKG.MOD:FACTORY",
        help="a function returning the (untrained) student nn.Module",
    )
    ds.add_argument(
        "--student-weights",
        metavar="FILE",
        help="state dict the student starts from (default: the factory's initial weights); "
        "with --epochs 0 --qat, the trained student to quantize without float distillation",
    )
    ds.add_argument(
        "--train",
        metavar="DATA",
        help="training data (required): an .npz with x and y, or package.module:function "
        "returning a Dataset",
    )
    ds.add_argument("--data", action=_Deprecated, dest="train", new="--train")
    ds.add_argument(
        "--val",
        metavar="DATA",
        help="validation data, same forms: picks the epoch exported and --lr auto's rate "
        "(default: 10%% of --train and --unlabelled, seeded, held out)",
    )
    ds.add_argument(
        "--unlabelled",
        metavar="DATA",
        help="more inputs without labels, taught by the teacher alone: an .npz with x, or "
        "package.module:function -> Dataset (default: none)",
    )
    ds.add_argument(
        "--epochs",
        type=_count,
        default=20,
        help="float distillation epochs; 0 skips it (with --student-weights and --qat) "
        "(default: 20)",
    )
    ds.add_argument(
        "--temperature", type=float, default=4.0, help="softmax temperature T (default: 4)"
    )
    ds.add_argument(
        "--alpha",
        type=float,
        default=0.7,
        help="weight of the teacher term, T²·KL; 1 - alpha weighs the labels' cross-entropy "
        "(1: no labels needed) (default: 0.7)",
    )
    ds.add_argument(
        "--lr",
        type=_lr,
        default=None,
        metavar="LR|auto",
        help="Adam's learning rate, or auto: of 3e-4, 1e-3, 3e-3, 1e-2 the one with the lowest "
        "validation loss after a few epochs each (default: auto)",
    )
    ds.add_argument(
        "--schedule",
        choices=["cosine", "constant"],
        default="cosine",
        help="learning-rate schedule (default: cosine, to 0 over the epochs)",
    )
    ds.add_argument(
        "--patience",
        type=int,
        default=0,
        help="stop after this many epochs without a better validation accuracy (default: 0, "
        "never); the best epoch is exported either way",
    )
    ds.add_argument("--batch", type=_positive, default=64, help="training batch size (default: 64)")
    ds.add_argument("--batch-size", action=_Deprecated, dest="batch", new="--batch",
                    type=_positive)  # fmt: skip
    ds.add_argument(
        "--seed", type=int, default=0, help="seed of weights, order, split (default: 0)"
    )
    ds.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/checkpoint.pt (and OUT/qat_checkpoint.pt with --qat)",
    )
    ds.add_argument(
        "--qat",
        action="store_true",
        help="then quantization-aware distillation: fine-tune the student's INT8 model, as "
        "--backend's plan writes it, with the teacher; writes student.ptq.onnx and "
        "student.int8.onnx (QDQ models for that backend)",
    )
    ds.add_argument(
        "--backend",
        default=DEFAULT_BACKEND,
        help=f"with --qat: the backend whose plan is trained (default: {DEFAULT_BACKEND})",
    )
    ds.add_argument(
        "--calib",
        metavar="DATA",
        help="with --qat: calibration data for the starting ranges, in export's forms "
        "(default: 512 samples of --train)",
    )
    ds.add_argument(
        "--method",
        default="percentile",
        choices=METHODS,
        help="with --qat: activation range method (default: percentile)",
    )
    ds.add_argument(
        "--qat-epochs", type=_positive, default=5, help="with --qat: epochs (default: 5)"
    )
    ds.add_argument(
        "--qat-scales",
        choices=["learned", "frozen"],
        default="learned",
        help="with --qat: scales learned as in LSQ, or frozen as calibrated (default: learned)",
    )
    ds.add_argument(
        "--qat-lr",
        type=_lr,
        default=None,
        metavar="LR|auto",
        help="with --qat: Adam's learning rate, or auto: of 1e-5, 3e-5, 1e-4, 3e-4, 1e-3 the "
        "one with the lowest validation loss after an epoch or so each (default: auto)",
    )
    ds.add_argument(
        "--algorithms",
        default=None,
        metavar="LIST",
        help="with --qat: export's pre-quantization algorithms (cle, smoothquant, adaround, "
        "bias-correction, or a preset: none, auto); QAD starts from the INT8 model export "
        "writes with them (default: auto)",
    )
    ds.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output folder: student.pt, student.onnx, metrics.json, checkpoints",
    )
    ds.add_argument("--quiet", "-q", action="store_true", help="print only errors")

    se = sub.add_parser(
        "sensitivity",
        help="per-region sensitivity to INT8 and the cost of keeping each region float, "
        "ranked as the accuracy guard ranks them",
    )
    se.add_argument("model", help="model.onnx, package.module:factory, or a .pt2 file")
    se.add_argument("--calib", required=True, metavar="DATA", help="calibration data, as export's")
    se.add_argument(
        "--held-out",
        metavar="DATA",
        help="data the regions are scored on (default: calibration samples not used)",
    )
    se.add_argument(
        "--out", type=Path, required=True, help="output folder: sensitivity.json and a plot"
    )
    se.add_argument("--backend", default=DEFAULT_BACKEND, help="the backend whose plan is probed")
    se.add_argument(
        "--method",
        default="percentile",
        choices=METHODS,
        help="activation range method",
    )
    se.add_argument(
        "--samples",
        type=_positive,
        metavar="N",
        help="use at most N calibration samples (default: 256)",
    )
    se.add_argument(
        "--tokenizer", type=Path, metavar="DIR", help="for text data: a local tokenizer folder"
    )
    se.add_argument("--quiet", "-q", action="store_true", help="print only errors")

    d = sub.add_parser(
        "demo", help="train a digits CNN, export INT8 for every installed backend, benchmark"
    )
    d.add_argument(
        "--out", type=Path, default=Path("demo-out"), help="output folder (default: demo-out)"
    )
    d.add_argument("--epochs", type=_positive, default=8, help="teacher training epochs")
    d.add_argument("--seed", type=int, default=0, help="seed of data split, weights and order")
    d.add_argument("--threads", type=_positive, help="CPU threads (default: all)")
    d.add_argument("--quiet", "-q", action="store_true", help="print only errors")

    co = sub.add_parser(
        "completion",
        help='print a shell completion script: eval "$(quantship completion bash)"',
    )
    co.add_argument("shell", choices=["bash", "zsh"], help="the shell the script is for")
    co.add_argument("--quiet", "-q", action="store_true", help="print only errors")
    return p

"""``quantship``: thin command line over ``quantship.api``. Parses, calls, prints.

A ``QuantshipError`` (a user mistake or a missing runtime) becomes one line on stderr
and exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from quantship.cli_parser import build_parser, subcommands
from quantship.config_file import apply_config
from quantship.errors import QuantshipError


def unique_shapes(
    given: list[tuple[str, tuple[list[int], list[int], list[int]]]],
) -> dict[str, tuple[list[int], list[int], list[int]]] | None:
    """``build-engine --shapes``, each input named once."""
    out: dict[str, tuple[list[int], list[int], list[int]]] = {}
    for name, bounds in given:
        if name in out:
            raise QuantshipError(f"--shapes names {name!r} twice; give each input one profile")
        out[name] = bounds
    return out or None


def _bench(args: argparse.Namespace, ui: Any) -> int:
    from quantship.measure.command import bench
    from quantship.measure.run import ScenarioPlan
    from quantship.measure.timing import BenchSettings

    if args.compare:
        from quantship.measure.compare import compare

        if args.target is not None:
            raise QuantshipError("--compare reads result files; give no folder or model beside it")
        compare(args.compare, plot_path=args.plot, ui=ui)
        return 0
    if args.target is None:
        raise QuantshipError(
            "bench needs an export folder or a model.onnx (or --compare A.json B.json)"
        )
    try:
        settings = BenchSettings(
            warmup=args.warmup,
            warmup_seconds=args.warmup_seconds,
            iterations=args.iterations,
            duration=args.duration,
            batches=args.batch,
            threads=args.threads,
            lengths=args.lengths,
            percentiles=args.percentiles,
        )
    except ValueError as err:
        raise QuantshipError(str(err)) from None
    scenarios, seconds = args.scenario, args.scenario_seconds
    if args.throughput_seconds is not None:  # the older name of --scenario-seconds
        ui.note("--throughput-seconds is deprecated: use --scenario-seconds "
                "(0: --scenario single-stream)")  # fmt: skip
        seconds = args.throughput_seconds
        if seconds == 0:
            scenarios = tuple(x for x in scenarios if x == "single-stream") or ("single-stream",)
    plan = ScenarioPlan(scenarios, seconds, args.qps, args.latency_bound, args.streams)
    if args.on is not None or args.ray is not None:
        if args.on is None or args.ray is None:
            raise QuantshipError("--ray ADDRESS and --on LABEL go together: bench on the nodes "
                                 "of that cluster that carry the label")  # fmt: skip
        from pathlib import Path

        from quantship.fleet import bench_on
        from quantship.measure.compare import fleet_report

        if args.data is not None or args.tokenizer is not None or args.lengths:
            raise QuantshipError("--on benches with the export's own inputs; --data, "
                                 "--tokenizer and --lengths are not shipped to the nodes")  # fmt: skip
        runs = bench_on(Path(args.target), args.on, args.ray, settings=settings, plan=plan,
                        backends=args.backend, input_shapes=dict(args.input_shape) or None,
                        ui=ui)  # fmt: skip
        fleet_report(runs, args.json, args.plot, ui)
        return 0
    bench(
        args.target,
        backends=args.backend,
        settings=settings,
        scenarios=plan,
        data=args.data,
        input_shapes=dict(args.input_shape) or None,
        tokenizer=args.tokenizer,
        json_path=args.json,
        plot_path=args.plot,
        ui=ui,
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    from quantship import api
    from quantship.ui import UI

    ui = UI(quiet=args.quiet)
    if args.command == "export" and args.replay is not None:
        from quantship.config_file import replay

        return replay(args, subcommands(build_parser())["export"], ui)
    if args.command == "export" and args.distill_table is not None:
        if args.model is not None:
            raise QuantshipError(
                f"'{args.config}': a model and a [distill] table both given; the distilled "
                "student is exported"
            )
        if args.out is None:
            raise QuantshipError(f"'{args.config}': [export] needs out (or give --out)")
        from quantship.pipeline_config import distill_first

        args.model = distill_first(args.distill_table, args.config, ui)
    if args.command == "export":
        if args.model is None or args.out is None:
            raise QuantshipError("export needs a model and --out (or --config pipeline.toml)")
        from quantship.calibration.images import ImageOptions

        try:
            images = ImageOptions(
                size=args.image_size,
                mean=args.mean,
                std=args.std,
                scale=args.scale,
                channel_order=args.channel_order,
                layout=args.layout,
            )
        except ValueError as err:
            raise QuantshipError(str(err)) from None
        shapes = dict(args.input_shape)
        nodes, patterns, ops = _kept_float(args.keep_float)
        result = api.export(
            args.model,
            args.calib,
            args.out,
            backends=args.backend,
            method=args.method,
            percentile=args.percentile,
            samples=args.samples,
            held_out=args.held_out,
            calib_cache=args.calib_cache,
            input_shapes=shapes or None,
            images=images,
            tokenizer=args.tokenizer,
            weights=args.weights,
            float_nodes=nodes,
            exclude=patterns,
            exclude_ops=ops,
            max_drop=args.max_drop,
            metric=args.metric,
            require_engine=args.require_engine,
            bench=not args.no_bench,
            threads=args.threads,
            plan=args.plan,
            algorithms=args.algorithms,
            pooling=args.pooling,
            ray=args.ray,
            ui=ui,
        )
        ui.note(f"wrote {result.out}/manifest.json")
        for failure in result.failures:
            print(f"quantship: error: {failure}", file=sys.stderr)
        return 2 if result.failures else 0
    if args.command == "bench":
        return _bench(args, ui)
    if args.command == "profile":
        api.profile(
            args.target,
            backends=args.backend,
            batch=args.batch,
            runs=args.runs,
            threads=args.threads,
            data=args.data,
            input_shapes=dict(args.input_shape) or None,
            tokenizer=args.tokenizer,
            top=args.top,
            json_path=args.json,
            ui=ui,
        )
        return 0
    if args.command == "check":
        from quantship.backends import registry
        from quantship.exporter.onnx_file import read_onnx

        backend = registry.get(args.runtime)
        if not backend.capabilities().validator:
            checkers = [n for n in registry.names() if registry.get(n).capabilities().validator]
            raise QuantshipError(
                f"backend {args.runtime!r} has no QDQ rules to check; backends with a "
                f"validator: {', '.join(checkers) or 'none'}"
            )
        findings = backend.validate(read_onnx(args.model).proto)
        for f in findings:
            print(f)
        errors = sum(1 for f in findings if f.severity == "error")
        print(
            f"{args.model}: {errors} error(s), {len(findings) - errors} warning(s) against "
            f"{backend.name}'s rules"
        )
        return 1 if errors else 0
    if args.command == "build-engine":
        api.build_engine(
            args.folder,
            max_batch=args.max_batch,
            float_layers=args.float_layers,
            shapes=unique_shapes(args.shapes),
            ui=ui,
        )
        return 0
    if args.command == "sensitivity":
        api.sensitivity(
            args.model,
            args.calib,
            args.out,
            held_out=args.held_out,
            backend=args.backend,
            method=args.method,
            samples=args.samples,
            tokenizer=args.tokenizer,
            ui=ui,
        )
        return 0
    if args.command == "distill":
        if args.train is None:
            raise QuantshipError("distill needs its training data: --train DATA")
        api.distill(
            args.teacher,
            args.student,
            args.train,
            args.out,
            val=args.val,
            unlabelled=args.unlabelled,
            teacher_weights=args.teacher_weights,
            student_weights=args.student_weights,
            epochs=args.epochs,
            temperature=args.temperature,
            alpha=args.alpha,
            lr=args.lr,
            batch_size=args.batch,
            seed=args.seed,
            resume=args.resume,
            patience=args.patience,
            schedule=args.schedule,
            qat=args.qat,
            backend=args.backend,
            calib=args.calib,
            method=args.method,
            qat_epochs=args.qat_epochs,
            qat_scales=args.qat_scales,
            qat_lr=args.qat_lr,
            algorithms=args.algorithms,
            ui=ui,
        )
        extra = ", student.ptq.onnx, student.int8.onnx" if args.qat else ""
        ui.note(f"wrote {args.out}/student.pt, student.onnx{extra} and metrics.json")
        return 0
    if args.command == "completion":
        from quantship.completion import script

        print(script(build_parser(), args.shell), end="")
        return 0
    if args.command == "demo":
        from quantship.demo import run_demo

        run_demo(args.out, epochs=args.epochs, seed=args.seed, threads=args.threads, ui=ui)
        return 0
    raise AssertionError(args.command)


def _kept_float(values: list[str]) -> tuple[list[str], list[str], list[str]]:
    """``--keep-float`` values: node names, ``re:`` patterns and ``op:`` types."""
    nodes = [v for v in values if not v.startswith(("re:", "op:"))]
    patterns = [v[3:] for v in values if v.startswith("re:")]
    ops = [v[3:] for v in values if v.startswith("op:")]
    return nodes, patterns, ops


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    given = list(sys.argv[1:] if argv is None else argv)
    try:
        distill, lists = apply_config(parser, given)
    except QuantshipError as err:
        print(f"quantship: error: {err}", file=sys.stderr)
        return err.exit_code
    args = parser.parse_args(given)
    for line in getattr(args, "deprecations", None) or []:
        print(f"quantship: note: {line}", file=sys.stderr)
    args.distill_table = distill
    for dest, value in lists.items():
        if not getattr(args, dest):  # not given on the command line: the file's
            setattr(args, dest, value)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return _run(args)
    except QuantshipError as err:
        print(f"quantship: error: {err}", file=sys.stderr)
        return err.exit_code
    except ModuleNotFoundError as err:
        from quantship.backends.registry import EXPORT_DEPS

        if err.name not in EXPORT_DEPS:
            raise
        print(
            f"quantship: error: {args.command} needs {err.name}, which a runtime-only install "
            "leaves out: pip install 'quantship[export]'",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("quantship: interrupted; nothing was written", file=sys.stderr)
        return 130


def entry() -> Any:
    raise SystemExit(main())


if __name__ == "__main__":
    raise SystemExit(main())

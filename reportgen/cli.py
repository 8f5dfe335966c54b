"""The `reportgen` command line.

Exit codes: 0 ok, 1 internal error (a bug: traceback shown), 2 user error (bad
spec, input or checkpoint: a message naming the file, no traceback unless
`--debug`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from reportgen import __version__
from reportgen.errors import LayerError, SpecError, UserError
from reportgen.output import STOP, environment_problem

if TYPE_CHECKING:
    from reportgen.spec import Spec

log = logging.getLogger("reportgen")
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
SIGN_PASSWORD_ENV = "REPORTGEN_SIGN_PASSWORD"
CHECK_SECONDS_NOTE = ("seconds: each cell run alone. A build computes every gradient method "
                      "and layer from one forward and backward per batch, so the column's "
                      "sum overstates its time")


def _spec_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", type=Path, help="the YAML spec file")


def _device(value: str) -> str:
    """`--device`, checked by the same rule as the spec's runtime.device."""
    from pydantic import ValidationError

    from reportgen.spec import RuntimeSection

    try:
        RuntimeSection.model_validate({"device": value})
    except ValidationError as exc:
        reason = exc.errors()[0].get("ctx", {}).get("error") or exc.errors()[0]["msg"]
        raise argparse.ArgumentTypeError(str(reason)) from exc
    return value


def _device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", type=_device,
                   help="override runtime.device (auto, cpu, cuda, cuda:N)")


def _int_in(value: str, low: int, high: int | None, what: str) -> int:
    problem = argparse.ArgumentTypeError(f"{value!r} is not {what}")
    try:
        number = int(value)
    except ValueError:
        raise problem from None
    if number < low or (high is not None and number > high):
        raise problem
    return number


def _positive_int(value: str) -> int:
    return _int_in(value, 1, None, "a positive integer")


def _port(value: str) -> int:
    return _int_in(value, 0, 65535, "a TCP port (0-65535; 0 picks a free one)")


def _cmd_validate(args: argparse.Namespace) -> int:
    from reportgen.output import check_cache_folder, pdf_in_site
    from reportgen.spec import load_spec

    spec = load_spec(args.spec)
    check_cache_folder(spec.runtime.cache, spec.output.site)
    if spec.output.pdf is not None:
        pdf_in_site(spec.output.site, spec.output.pdf)
    # validate stays fast by not building the model, so it cannot vouch for module paths
    paths = [layer for layer in spec.layers if "." in layer or "[" in layer or "@" in layer]
    note = (f"module paths ({', '.join(paths)}) are checked when the model is built: run "
            f"`reportgen check {args.spec}`") if paths else ""
    if args.json:
        result = {"ok": True, "summary": _spec_summary(spec)}
        out.print_json(json.dumps({**result, "note": note} if note else result))
    elif not args.quiet:  # quiet: the exit code says it
        out.print(f"ok: {_spec_summary(spec)}", markup=False)
        if note:
            out.print(f"note: {note}", markup=False)
    return 0


def _spec_summary(spec: Spec) -> str:
    """One line on what the spec asks for (`reportgen validate`)."""
    from reportgen.compute.discovery import find_images

    n = len(find_images(spec.data, (spec.output.site, spec.runtime.cache)))
    ckpt = spec.model.checkpoint.name if spec.model.checkpoint else "random weights"
    return (f"{spec.model.architecture}/{spec.model.encoder} ({ckpt}), {n} images at "
            f"{spec.model.size[0]}x{spec.model.size[1]}, {len(spec.layers)} layers x "
            f"{len(spec.methods)} methods, metrics: {', '.join(spec.metrics) or 'none'}")


def _cmd_schema(args: argparse.Namespace) -> int:
    from reportgen.spec_reference import json_schema, reference_markdown

    sys.stdout.write(reference_markdown() if args.markdown else json_schema() + "\n")
    return 0


def _layer_model(args: argparse.Namespace):
    from reportgen.compute.models.build import build_model

    if args.spec:
        from reportgen.spec import load_spec

        spec = load_spec(args.spec, check_files=False)
        m = spec.model
        model = build_model(m.architecture, m.encoder, m.classes, m.in_channels, m.options)
        return model, m.size, m.in_channels, spec.layers
    if not (args.architecture and args.encoder):
        raise UserError("give --spec SPEC, or both --architecture and --encoder")
    size = (args.input_size, args.input_size)
    model = build_model(args.architecture, args.encoder, args.classes, args.in_channels)
    return model, size, args.in_channels, []  # no spec: no layer is asked for


def _cmd_layers(args: argparse.Namespace) -> int:
    from reportgen.compute.models.layers import (
        ALIASES,
        all_module_shapes,
        describe_layers,
        resolve_layers,
    )

    model, size, in_channels, layers = _layer_model(args)
    problems: dict[str, str] = {}  # layer -> why it does not resolve; the others are listed
    if args.all:
        infos = all_module_shapes(model, size, in_channels)
    else:
        wanted = list(ALIASES) + [x for x in layers if x not in ALIASES]
        try:  # one dry forward for all; one per layer only to tell which fail and why
            resolved = resolve_layers(model, wanted, size, in_channels)
        except LayerError:
            resolved = {}
            for layer in wanted:
                try:
                    resolved.update(resolve_layers(model, [layer], size, in_channels))
                except LayerError as exc:
                    problems[layer] = str(exc)
        infos = describe_layers(model, resolved, size, in_channels) if resolved else []
    rows = [  # a module run several times has no one shape: its last call's is not shown
        {"alias": i.name if i.name in ALIASES else "", "path": i.path,
         "channels": i.channels if i.calls == 1 else None,
         "stride": i.stride if i.calls == 1 else None, "calls": i.calls,
         "meaning": ALIASES[i.name].meaning if i.name in ALIASES else (
             f"runs {i.calls} times in one forward: cannot be explained" if i.calls > 1
             else "")}
        for i in infos
    ]
    # a spec's layer that does not resolve would stop its build; an alias no spec asks
    # for is only information about the model
    code = 2 if any(layer in layers for layer in problems) else 0
    if args.json:
        out.print_json(json.dumps(rows + [{"alias": k if k in ALIASES else "", "path": None,
                                           "layer": k, "error": v}
                                          for k, v in problems.items()]))
        return code
    table = Table(title=f"layers of {type(model).__name__} at {size[0]}x{size[1]}")
    table.add_column("alias", no_wrap=True)
    # never cut a path the user will copy into a spec
    table.add_column("module path", overflow="fold",
                     min_width=max((len(r["path"]) for r in rows), default=11))
    for col in ("channels", "stride", "meaning"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["alias"], r["path"], str(r["channels"] or "-"), _stride(r["stride"]),
                      r["meaning"])
    out.print(table)
    for layer, problem in problems.items():
        err.print(f"{'error' if layer in layers else 'note'}: {problem}", markup=False)
    return code


def _stride(stride: float | None) -> str:
    """An output stride as `layers` prints it: a padding module's output is a few pixels
    larger than its stage's (input 192, output 194: stride 0.99), so that is "≈1"."""
    if not stride:
        return "-"
    if float(stride).is_integer() or stride < 0.75:  # an upsampled output: shown as it is
        return f"{stride:g}"
    return f"≈{round(stride)}"


def _cmd_methods(args: argparse.Namespace) -> int:
    from reportgen.compute.cam.methods import list_methods

    rows = [r._asdict() for r in list_methods()]
    if args.json:
        out.print_json(json.dumps(rows))
        return 0
    table = Table(title="CAM methods")
    for col in ("name", "family", "cost per image", "reference"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["family"], r["cost"], r["reference"])
    out.print(table)
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from reportgen.build import check_spec

    rows, warnings = check_spec(args.spec, device=args.device)
    if args.json:
        # the output stays a list of rows; the model's warnings hold for every cell's map
        out.print_json(json.dumps([{**r, "warnings": warnings} for r in rows]))
    elif args.quiet:  # only what failed: warnings are not failures, as for build --quiet
        for r in rows:
            if not r["ok"]:
                err.print(f"{r['layer']} x {r['method']}: failed: {r['reason']}", markup=False)
    else:
        table = Table(title="layer x method check on the first image",
                      caption=CHECK_SECONDS_NOTE)
        # never cut a layer path: two deep paths would look the same
        table.add_column("layer", overflow="fold",
                         min_width=max((len(r["layer"]) for r in rows), default=5))
        for col in ("method", "status", "seconds", "map range", "flags"):
            table.add_column(col)
        for r in rows:
            reason = escape(r["reason"])
            if "skipped" in r["flags"]:
                status = f"[dim]skipped[/]: {reason}"
            elif not r["ok"]:
                status = f"[red]failed[/]: {reason}"
            else:
                status = "[green]OK[/]"  # "approximate" shows in the flags
            rng = f"{r['min']:.3g} .. {r['max']:.3g}" if r.get("min") is not None else "-"
            table.add_row(r["layer"], r["method"], status, f"{r['seconds']:.2f}", rng,
                          ", ".join(r["flags"]))
        out.print(table)
        for warning in warnings:  # as build prints them: a check must not hide random weights
            err.print(f"warning: {warning}", markup=False)
    return 0 if all(r["ok"] for r in rows) else 1


def _cmd_build(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from reportgen.build import BuildOptions, build

    password = args.sign_password or os.environ.get(SIGN_PASSWORD_ENV)
    options = BuildOptions(device=args.device, single_file=args.single_file,
                           force=args.force, sign=args.sign, sign_password=password,
                           keep_going=args.keep_going, cache=not args.no_cache)
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, disable=args.quiet or args.json) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done)

        options.progress = progress
        result = build(args.spec, options)
    if args.json:
        out.print_json(json.dumps(result.summary()))
    elif not args.quiet:
        for warning in result.warnings:  # also on the audit page; a reader of the console
            err.print(f"warning: {warning}", markup=False)  # must not miss random weights
        out.print(f"site: {(result.site / 'index.html').resolve()}")
        if result.pdf:
            out.print(f"pdf:  {result.pdf.resolve()}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from reportgen.verify import verify

    report = verify(args.path)
    if args.json:
        out.print_json(json.dumps(report.to_dict()))
    elif not args.quiet or not report.ok:
        for finding in report.problems:
            detail = f" ({finding.detail})" if finding.detail else ""
            out.print(f"{finding.problem}: {finding.path}{detail}", markup=False)
        for note in report.notes:
            out.print(f"note: {note}", markup=False)
        if report.signature is not None:
            signature = report.signature
            who = f" by {signature.signer}" if signature.signer else ""
            out.print(f"signature: {signature.status}{who}", markup=False)
        verdict = "ok" if report.ok else f"FAILED: {len(report.problems)} problem(s)"
        out.print(f"{verdict}: {report.checked} file(s) checked in {report.target}",
                  markup=False)
    return 0 if report.ok else 1


def _cmd_cache(args: argparse.Namespace) -> int:
    from reportgen.cache import DEFAULT_FOLDER, GB, clear, usage

    limit: float | None = None
    if args.spec is not None:
        from reportgen.spec import load_spec

        runtime = load_spec(args.spec, check_files=False).runtime
        folder, limit = runtime.cache, runtime.cache_max_gb
        if folder is None:
            raise UserError(f"{args.spec}: runtime.cache is null, so this spec keeps no cache")
    else:
        folder = Path(DEFAULT_FOLDER).resolve()
    if args.action == "info":
        count, size = usage(folder)
        if args.json:
            out.print_json(json.dumps({"folder": str(folder), "entries": count, "bytes": size,
                                       "max_gb": limit}))
        elif not args.quiet:
            bound = "" if limit is None else f" (runtime.cache_max_gb: {limit:g})"
            out.print(f"{folder}: {count} cached image result(s), {size / GB:.2f} GB{bound}",
                      markup=False)
        return 0
    count = clear(folder)
    if args.json:
        out.print_json(json.dumps({"folder": str(folder), "removed": count}))
    elif not args.quiet:
        out.print(f"removed {count} cached image result(s) from {folder}", markup=False)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from reportgen.serve import open_server, site_folder

    root = site_folder(args.dir)
    server = open_server(root, args.port)
    with server:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        if args.json:
            out.print_json(json.dumps({"url": url, "folder": str(root)}), indent=None)
        elif not args.quiet:
            out.print(f"serving {root} at {url} (Ctrl+C stops)", markup=False)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
    return 0


def _build_arguments(p: argparse.ArgumentParser) -> None:
    _spec_arg(p)
    _device_arg(p)
    p.add_argument("--single-file", action="store_true",
                   help="also write one self-contained HTML file")
    p.add_argument("--force", action="store_true",
                   help="allow an output folder in a system folder, or one holding files "
                   "that are not a reportgen site (they are replaced)")
    p.add_argument("--sign", type=Path, metavar="CERT.p12",
                   help="sign the PDF (PAdES) with this PKCS#12 key and certificate")
    p.add_argument("--sign-password",
                   help=f"password of the PKCS#12 file (or set {SIGN_PASSWORD_ENV})")
    p.add_argument("--keep-going", action="store_true",
                   help="build without unreadable images or masks, listing them as excluded "
                   "inputs (default: refuse them all before computing anything)")
    p.add_argument("--no-cache", action="store_true",
                   help="neither reuse nor store cached maps and metrics (runtime.cache)")


def _layers_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", type=Path, help="take the model from this spec")
    p.add_argument("--architecture", help="smp architecture, e.g. UnetPlusPlus")
    p.add_argument("--encoder", help="smp encoder, e.g. efficientnet-b5")
    p.add_argument("--input-size", type=_positive_int, default=256,
                   help="dry-run size (default: %(default)s)")
    p.add_argument("--classes", type=_positive_int, default=1,
                   help="output channels (default: %(default)s)")
    p.add_argument("--in-channels", type=_positive_int, default=3,
                   help="input channels (default: %(default)s)")
    p.add_argument("--all", action="store_true", help="list every module with a 4-D output")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reportgen",
        description="Explain segmentation models with class-activation maps and write a "
        "static report site plus an archival PDF.",
    )
    parser.add_argument("--version", action="version", version=f"reportgen {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    common.add_argument("--quiet", "-q", action="store_true",
                        help="print only errors (layers, methods and schema print their "
                        "answer anyway)")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], int], help_text: str):
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    _build_arguments(add("build", _cmd_build,
                         "compute the maps and metrics and write the site and the PDF"))

    p = add("verify", _cmd_verify,
            "check a built site (or its PDF) against its manifest and checksums; "
            "exit 1 when a file changed, is missing or is extra")
    p.add_argument("path", type=Path, help="the site folder or a report PDF")

    p = add("validate", _cmd_validate, "check a spec and print a one-line summary")
    _spec_arg(p)

    p = add("schema", _cmd_schema, "print the spec's JSON Schema (for editor autocompletion)")
    p.add_argument("--markdown", action="store_true",
                   help="print the reference table of every key instead (as in docs/guide.md)")

    _layers_arguments(add("layers", _cmd_layers, "list layer aliases (or all modules) with "
                          "paths, channels and output strides"))

    add("methods", _cmd_methods, "list every CAM method with its family, cost and reference")

    p = add("check", _cmd_check,
            "run every requested layer x method on one image and print a status table")
    _spec_arg(p)
    _device_arg(p)

    p = add("cache", _cmd_cache, "manage the cache of per-image maps and metrics")
    p.add_argument("action", choices=["info", "clear"],
                   help="info: entries and size; clear: remove the cache folder")
    p.add_argument("spec", type=Path, nargs="?",
                   help="the spec whose runtime.cache to use (default: ./.reportgen-cache)")

    p = add("serve", _cmd_serve, "serve a built site on 127.0.0.1 (loopback only)")
    p.add_argument("dir", type=Path, nargs="?", default=Path("site"),
                   help="the built site folder, holding index.html (default: %(default)s)")
    p.add_argument("--port", type=_port, default=8000,
                   help="TCP port on 127.0.0.1; 0 picks a free one (default: %(default)s)")
    return parser


def _interrupted(signum: int, frame: object) -> None:
    # STOP first: the exception raised here is lost if it lands in a finalizer
    STOP.set()
    raise KeyboardInterrupt


def _terminated(signum: int, frame: object) -> None:
    # SIGTERM (kill, a batch scheduler, a container stop) unwinds like Ctrl-C: a build
    # removes its scratch folder and its lock, and the previous site stays as it was
    STOP.set()
    sys.stderr.write("terminated\n")
    raise SystemExit(128 + signum)


def run_main(argv: Sequence[str] | None = None) -> int:
    """`main`, with an unexpected exception turned into exit code 1 (traceback on stderr)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _interrupted)
        signal.signal(signal.SIGTERM, _terminated)
    try:
        return main(argv)
    except Exception:
        err.print_exception()
        err.print("internal error: this is a bug in reportgen; please report it with the "
                  "traceback above")
        return 1


def _without_traceback(record: logging.LogRecord) -> bool:
    """Keep a log record's message but drop its traceback: libraries such as pyHanko log one
    for failures that reach the user as a `UserError` (tracebacks are for --debug)."""
    record.exc_info = None
    record.exc_text = None
    return True


def main(argv: Sequence[str] | None = None) -> int:
    try:
        os.getcwd()
    except FileNotFoundError:  # checked before torch is imported: it aborts without one
        err.print("error: the current folder no longer exists; cd to an existing folder",
                  markup=False)
        return 2
    args = _parser().parse_args(argv)
    level = logging.DEBUG if args.debug else (logging.WARNING if args.quiet else logging.INFO)
    handler = RichHandler(console=err, show_path=False, show_time=False)
    if not args.debug:
        handler.addFilter(_without_traceback)
    logging.basicConfig(level=level, format="%(message)s", handlers=[handler], force=True)
    try:
        return args.func(args)
    except SpecError as exc:
        if args.debug:
            raise
        err.print(f"[red]error[/]: {len(exc.problems)} problem(s) in the spec", markup=True)
        for problem in exc.problems:
            err.print(f"  {problem}", markup=False)
        return 2
    except UserError as exc:
        if args.debug:
            raise
        err.print(f"error: {exc}", markup=False)
        return 2
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except OSError as exc:  # a full disk, a read-only folder: the machine's, not a bug
        problem = environment_problem(exc)
        if problem is None or args.debug:
            raise
        err.print(f"error: {problem}", markup=False)
        return 2


if __name__ == "__main__":
    sys.exit(run_main())

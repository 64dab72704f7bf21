"""The ``bench`` command line.

    bench run                       # kmeans + fd on synth-passnet with the offline default extractor
    bench run --methods protosim,dna --datasets passnet --extractor dino-vits16
    bench list | plugins | datasets | extractors
    bench leaderboard [RESULTS] [-o leaderboards]
    bench report RUN_DIR [-o report.html]   # one self-contained HTML page of a run's pictures
    bench check METHOD              # the plugin conformance checks

User mistakes end with one ``error: …`` line and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bench import __version__
from bench.errors import BenchError


def _console(stderr: bool) -> Console:
    """Rich console; when piped (CI logs, files) use a wide fixed width so tables stay readable."""
    stream = sys.stderr if stderr else sys.stdout
    piped = not stream.isatty() and not os.environ.get("COLUMNS")
    return Console(stderr=stderr, highlight=False, width=160 if piped else None)


console = _console(stderr=False)
err_console = _console(stderr=True)


def _csv(text: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be integers, got {text!r}") from None


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes i/n, e.g. 0/4; got {text!r}") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard i/n needs 0 <= i < n; got {text!r}")
    return i, n


def _param(text: str) -> tuple[str, str, object]:
    """``method.key=value`` with value parsed as JSON when possible (numbers, true, lists)."""
    import json

    try:
        lhs, value = text.split("=", 1)
        method, key = lhs.split(".", 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--set takes METHOD.PARAM=VALUE, e.g. kmeans.k=20; got {text!r}") from None
    try:
        parsed: object = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return method, key, parsed


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
        self.print_usage(sys.stderr)
        err_console.print(f"[bold red]error:[/] {escape(message)}")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bench", description="Benchmark methods that summarise image datasets and tell how "
                "datasets differ, on the same data, features and metrics.")
    p.add_argument("--version", action="version", version=f"bench {__version__}")
    p.add_argument("--strict-plugins", action="store_true", help="fail if any plugin fails to load")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    r = sub.add_parser("run", help="run methods on datasets and write one record per cell",
                       description="Run methods × datasets × seeds with one extractor; write one JSON record "
                       "per cell under --out and print a summary table. With no arguments: kmeans and fd "
                       "on the embedded synth-passnet with the offline default extractor.")
    r.add_argument("--methods", type=_csv, default=None, help="comma-separated method names (bench list)")
    r.add_argument("--datasets", type=_csv, default=None, help="comma-separated dataset names (bench datasets)")
    r.add_argument("--extractor", default=None, help="feature extractor (bench extractors); default tiny-vit")
    r.add_argument("--weights", default=None, help="local weights file/folder for the extractor")
    r.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    r.add_argument("--seeds", type=_seeds, default=[0], help="comma-separated seeds (default 0)")
    r.add_argument("--limit", type=int, default=None, help="stratified, seeded subsample of N images per dataset")
    r.add_argument("--out", type=Path, default=Path("results"), help="records directory (default results/)")
    r.add_argument("--resume", action="store_true", help="skip cells whose record already exists with status ok")
    r.add_argument("--preset", choices=["auto", "paper", "quick"], default="auto",
                   help="method defaults: paper, or quick (CPU-sized); auto = quick on embedded datasets")
    r.add_argument("--set", dest="params", type=_param, action="append", default=[], metavar="M.P=V",
                   help="set a method parameter, e.g. --set kmeans.k=20 (repeatable)")
    r.add_argument("--batch-size", type=int, default=64)
    r.add_argument("--workers", type=int, default=None, metavar="N",
                   help="image-decoding worker processes (default: one per core; 0 = in the main process)")
    r.add_argument("--precision", default="fp32", metavar="P",
                   help="extraction precision: fp32 (default, full float32) | bf16 | fp16; part of the cache key")
    r.add_argument("--decode", default="auto", choices=["auto", "cpu", "gpu"],
                   help="JPEG decoding: auto (on the GPU when --device is CUDA), cpu (worker processes) or gpu")
    r.add_argument("--cache-dir", type=Path, default=None, help="feature cache (default ~/.cache/bench, $BENCH_CACHE)")
    r.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache")
    r.add_argument("--shard", type=_shard, default=None, help="run only shard i/n of the grid (job arrays)")
    r.add_argument("--no-progress", action="store_true", help="hide progress bars")
    r.add_argument("--launcher", choices=["none", "torchrun"], default="none",
                   help="torchrun: start --nproc-per-node processes with torch.distributed.run; feature "
                   "extraction is sharded over them, protosim trains with DDP, kmeans all-reduces")
    r.add_argument("--nproc-per-node", default="auto", metavar="N",
                   help="processes for --launcher torchrun (default auto: one per GPU, else per CPU)")

    sub.add_parser("list", help="list runnable methods (summarisers and comparators)")
    sub.add_parser("plugins", help="list plugins with version, status and errors")
    sub.add_parser("datasets", help="list datasets and whether their roots are configured")
    sub.add_parser("extractors", help="list feature extractors")
    lb = sub.add_parser("leaderboard", help="regenerate leaderboard tables from records")
    lb.add_argument("results", nargs="?", type=Path, default=Path("results"), help="records directory")
    lb.add_argument("-o", "--out", type=Path, default=Path("leaderboards"), help="output directory")
    rp = sub.add_parser("report", help="render a run's records and artefacts as one self-contained HTML page")
    rp.add_argument("run_dir", type=Path, help="records directory of a run (its --out)")
    rp.add_argument("-o", "--out", type=Path, default=None, help="output file (default RUN_DIR/report.html)")
    ck = sub.add_parser("check", help="run the conformance checks on a method (for plugin authors)")
    ck.add_argument("method")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=os.environ.get("BENCH_LOG", "WARNING"))
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return COMMANDS[args.command](args)
    except BenchError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
        return 2
    except KeyboardInterrupt:
        err_console.print("[bold yellow]interrupted:[/] finished cells are saved; rerun with --resume to continue")
        return 130


def _regs(args):
    from bench import plugins

    return plugins.load(strict=args.strict_plugins)


LAUNCHER_OPTIONS = ("--launcher", "--nproc-per-node")


def _without_launcher(argv: list[str]) -> list[str]:
    """``argv`` minus the launcher options (``--opt value`` and ``--opt=value`` forms)."""
    out, skip = [], False
    for tok in argv:
        if skip:
            skip = False
        elif tok in LAUNCHER_OPTIONS:
            skip = True
        elif not tok.startswith(tuple(f"{o}=" for o in LAUNCHER_OPTIONS)):
            out.append(tok)
    return out


def launch_torchrun(argv: list[str], nproc: str) -> int:
    """Re-run this command under torchrun (``torch.distributed.run --standalone``) on one node."""
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "bench", *_without_launcher(argv)]
    err_console.print(f"[dim]{escape(' '.join(cmd[1:]))}[/]")
    return subprocess.call(cmd)


def cmd_run(args) -> int:
    from bench import distributed

    if args.launcher == "torchrun" and not distributed.launched():
        import torch

        on_cuda = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
        if on_cuda and args.nproc_per_node.isdigit():   # checked before torchrun, which would print a traceback
            distributed.check_one_gpu_per_process(int(args.nproc_per_node))
        return launch_torchrun(args.argv, args.nproc_per_node)
    if os.environ.get("RANK", "0") != "0":
        console.quiet = True   # rank 0 prints the run; the others only their errors
    status = None
    try:
        status = _run(args)
        return status
    finally:
        distributed.shutdown(failed=bool(status))   # a status, not an exception: let the other ranks exit first


def _run(args) -> int:
    from bench.runner import DEFAULT_DATASETS, DEFAULT_EXTRACTOR, DEFAULT_METHODS, RunConfig, Runner

    params: dict[str, dict] = {}
    for method, key, value in args.params:
        params.setdefault(method, {})[key] = value
    cfg = RunConfig(
        methods=args.methods or list(DEFAULT_METHODS), datasets=args.datasets or list(DEFAULT_DATASETS),
        extractor=args.extractor or DEFAULT_EXTRACTOR, weights=args.weights, device=args.device,
        seeds=args.seeds, limit=args.limit, out=args.out, resume=args.resume, preset=args.preset,
        params=params, batch_size=args.batch_size, cache_dir=args.cache_dir, no_cache=args.no_cache,
        progress=not args.no_progress and console.is_terminal, strict_plugins=args.strict_plugins,
        shard=args.shard, workers=args.workers, precision=args.precision,
        decode=args.decode,
    )
    runner = Runner(cfg, regs=_regs(args), echo=lambda m: err_console.print(f"[yellow]{escape(m)}[/]"))
    broken = [p for p in runner.regs.plugins if p.status == "error"]
    for p in broken:
        err_console.print(f"[yellow]warning:[/] plugin {p.name} failed to load ({escape(p.error)}); "
                          "see `bench plugins`")
    console.print(f"bench {__version__} · extractor [bold]{cfg.extractor}[/] · device [bold]{runner.device}[/] · "
                  f"methods {','.join(cfg.methods)} · datasets {','.join(cfg.datasets)} · seeds "
                  f"{','.join(map(str, cfg.seeds))}")
    results = runner.run()
    _print_summary(results)
    n_err = sum(r.record.status == "error" for r in results)
    console.print(f"{len(results)} cells ({sum(r.skipped for r in results)} resumed, {n_err} failed); "
                  f"records in {cfg.out}/ · tables: bench leaderboard {cfg.out}")
    return 1 if n_err else 0


SUMMARY_METRICS = ["nmi", "ami", "nmi_random", "probe_acc", "dup_precision", "dup_recall",
                   "fidelity_spearman", "score_between", "score_null"]


def _print_summary(results) -> None:
    shown = [m for m in SUMMARY_METRICS if any(m in r.record.metrics for r in results)]
    table = Table(title="bench run")
    for col in ["dataset", "method", "seed", *shown, "time s", "status"]:
        table.add_column(col, justify="right" if col not in ("dataset", "method", "status") else "left")
    for res in results:
        rec = res.record
        vals = []
        for m in shown:
            v = rec.metrics[m].value if m in rec.metrics else None
            vals.append("" if v is None else f"{v:.3f}")
        status = "ok" + (" (resumed)" if res.skipped else "") if rec.status == "ok" else f"[red]{escape(rec.error)}[/]"
        table.add_row(rec.dataset.name, rec.method.name, str(rec.seed), *vals,
                      f"{sum(rec.timings_s.values()):.1f}", status)
    console.print(table)


def cmd_list(args) -> int:
    from bench.plugins import method_names

    regs = _regs(args)
    table = Table(title="methods")
    for col in ("method", "roles", "version", "from"):
        table.add_column(col)
    for name in method_names(regs):
        roles, cls = [], None
        for role, registry in (("summariser", regs.summarisers), ("comparator", regs.comparators)):
            if name in registry:
                roles.append(role)
                cls = registry.get(name)
        table.add_row(name, ", ".join(roles), str(getattr(cls, "version", "")), cls.__module__.split(".")[0])
    console.print(table)
    return 0


def cmd_plugins(args) -> int:
    regs = _regs(args)
    table = Table(title="plugins (entry-point group 'bench')")
    for col in ("name", "distribution", "version", "status", "hooks / error"):
        table.add_column(col, overflow="fold")
    for p in regs.plugins:
        status = {"ok": "[green]ok[/]", "error": "[red]error[/]"}.get(p.status, p.status)
        table.add_row(p.name, p.distribution, p.version, status, escape(p.error) or ", ".join(
            h.removeprefix("bench_") for h in p.hooks))
    console.print(table)
    return 0


def cmd_datasets(args) -> int:
    regs = _regs(args)
    table = Table(title="datasets (also: imagefolder:PATH)")
    for col in ("name", "ready", "description"):
        table.add_column(col)
    for name in regs.datasets.names():
        spec = regs.datasets.get(name)
        reason = spec.ready()
        table.add_row(name, "[green]yes[/]" + (" (embedded)" if spec.embedded else "") if not reason
                      else f"[red]no[/]: {escape(reason)}", escape(spec.description))
    console.print(table)
    return 0


def cmd_extractors(args) -> int:
    regs = _regs(args)
    table = Table(title="extractors")
    table.add_column("name")
    table.add_column("description")
    for name in regs.extractors.names():
        factory = regs.extractors.get(name)
        doc = (getattr(factory, "__doc__", None) or "").strip().splitlines()
        table.add_row(name, doc[0] if doc else "")
    console.print(table)
    return 0


def cmd_leaderboard(args) -> int:
    from bench import leaderboard

    if not args.results.is_dir():
        raise BenchError(f"no records directory {str(args.results)!r}; run `bench run` first or pass the "
                         "directory that holds the records")
    written = leaderboard.write(args.results, args.out)
    console.print(f"wrote {len(written)} files to {args.out}/: " + ", ".join(p.name for p in written))
    return 0


def cmd_report(args) -> int:
    from bench.report import build_report

    path = build_report(args.run_dir, args.out, regs=_regs(args))
    console.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def cmd_check(args) -> int:
    from bench.conformance import check_method

    regs = _regs(args)
    failures = check_method(args.method, regs=regs)
    for name, error in failures:
        status = "[green]pass[/]" if error is None else f"[red]FAIL[/] {error}"
        console.print(f"{args.method} · {name}: {status}")
    return 1 if any(e is not None for _, e in failures) else 0


COMMANDS = {"run": cmd_run, "list": cmd_list, "plugins": cmd_plugins, "datasets": cmd_datasets,
            "extractors": cmd_extractors, "leaderboard": cmd_leaderboard, "report": cmd_report,
            "check": cmd_check}

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

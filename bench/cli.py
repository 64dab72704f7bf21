"""The ``bench`` command line.

    bench run                       # kmeans + fd on synth-passnet with the offline default extractor
    bench compare A B               # how do my two datasets differ? (score, p-value, CI, what differs)
    bench summarise A --save A.bench   # then: bench compare A.bench B
    bench duplicates DIR [DIR2]     # near-duplicate groups within a set, leakage across two
    bench run --methods protosim,dna --datasets passnet --extractor dino-vits16
    bench list | plugins | datasets | extractors
    bench leaderboard [RESULTS] [-o DIR]
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
    """Rich console; when piped (CI logs, files) use a wide fixed width so tables stay readable.
    No emoji shortcodes: a folder named ``:x:`` or a quoted ``root:x:0:0`` must print as written."""
    stream = sys.stderr if stderr else sys.stdout
    piped = not stream.isatty() and not os.environ.get("COLUMNS")
    return Console(stderr=stderr, highlight=False, width=160 if piped else None, soft_wrap=True, emoji=False)


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


def _setting(text: str):
    """``METHOD[.ROLE].PARAM=VALUE``: the shape is checked here, the value against the method's
    constructor when the run is planned (before any work)."""
    from bench.factory import parse_setting

    try:
        return parse_setting(text)
    except BenchError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _nproc(text: str) -> str:
    if text == "auto" or (text.isdigit() and int(text) >= 1):
        return text
    raise argparse.ArgumentTypeError(f"expected a positive integer or auto, got {text!r}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
        self.print_usage(sys.stderr)
        err_console.print(f"[bold red]error:[/] {escape(message)}")
        raise SystemExit(2)


def _common_data_options(p: argparse.ArgumentParser) -> None:
    """Options ``compare`` and ``summarise`` share with ``run``."""
    p.add_argument("--methods", type=_csv, default=None, help="comma-separated comparators (default: all "
                   "with a permutation null; for a saved summary, those that support one)")
    p.add_argument("--extractor", default=None, help="feature extractor (bench extractors); default tiny-vit")
    p.add_argument("--weights", default=None, help="local weights file/folder for the extractor")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--seed", type=int, default=0, help="seed of the null draws, bootstrap and methods (default 0)")
    p.add_argument("--limit", type=int, default=None, help="stratified, seeded subsample of N images per side")
    p.add_argument("--preset", choices=["auto", "paper", "quick"], default="auto",
                   help="method defaults: paper, or quick (CPU-sized); auto = quick on embedded datasets")
    p.add_argument("--set", dest="settings", type=_setting, action="append", default=[], metavar="M[.ROLE].P=V",
                   help="set a method parameter, or M.preset=NAME for a named set such as dna.preset=vdna "
                   "(repeatable; type-checked before any work)")
    _extraction_options(p)
    p.add_argument("--out", type=Path, default=Path("results"), help="records directory (default results/)")
    p.add_argument("--cache-dir", type=Path, default=None, help="feature cache (default ~/.cache/bench, $BENCH_CACHE)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _extraction_options(p: argparse.ArgumentParser) -> None:
    """How images become features: the same options for every verb."""
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="image-decoding worker processes (default: one per core; 0 = in the main process)")
    p.add_argument("--precision", default="fp32", metavar="P",
                   help="extraction precision: fp32 (default, full float32) | bf16 | fp16; part of the cache key")
    p.add_argument("--decode", default="auto", choices=["auto", "cpu", "gpu"],
                   help="JPEG decoding: auto (on the GPU when --device is CUDA), cpu (worker processes) or gpu")


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
    r.add_argument("--set", dest="settings", type=_setting, action="append", default=[], metavar="M[.ROLE].P=V",
                   help="set a method parameter, e.g. --set kmeans.k=20 or --set dna.comparator.distance=nfd, "
                   "or a named preset: --set dna.preset=vdna (repeatable; type-checked before any work)")
    _extraction_options(r)
    r.add_argument("--cache-dir", type=Path, default=None, help="feature cache (default ~/.cache/bench, $BENCH_CACHE)")
    r.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache")
    r.add_argument("--shard", type=_shard, default=None, help="run only shard i/n of the grid (job arrays)")
    r.add_argument("--no-progress", action="store_true", help="hide progress bars")
    r.add_argument("--launcher", choices=["none", "torchrun"], default="none",
                   help="torchrun: start --nproc-per-node processes with torch.distributed.run; feature "
                   "extraction is sharded over them, protosim trains with DDP, kmeans all-reduces")
    r.add_argument("--nproc-per-node", type=_nproc, default="auto", metavar="N",
                   help="processes for --launcher torchrun (default auto: one per GPU, else per CPU)")

    cp = sub.add_parser("compare", help="how do two datasets differ? score, null, p-value, CI and what differs",
                        description="Compare dataset A with dataset B with every comparator (or --methods): the score, "
                        "a permutation null and p-value, a bootstrap CI, the sample sizes, per class with "
                        "--per-class, and what each comparator finds different. A and B: a folder (class "
                        "sub-folders or not), imagefolder:PATH, folder:PATH, a registered dataset name, or "
                        "for A a saved summary (bench summarise A --save A.bench).")
    cp.add_argument("a", help="dataset A (or a saved summary A.bench)")
    cp.add_argument("b", help="dataset B")
    _common_data_options(cp)
    cp.add_argument("--per-class", action="store_true", help="scores per class where both sides are labelled")
    cp.add_argument("--permutations", type=int, default=None, metavar="N",
                    help="null draws per comparator (default: each comparator's own, e.g. fd 200)")
    cp.add_argument("--bootstrap", type=int, default=100, metavar="N", help="draws for the CI: half-samples "
                    "(fd, dna) or bootstrap resamples (default 100; 0: no CI)")
    cp.add_argument("--blocks", type=int, default=None, metavar="N",
                    help="at most N random blocks of images per side for the null and the CI of comparators "
                    "with additive states (fd, dna; default: one image per block while the states fit 256 MiB): "
                    "fewer blocks, cheaper draws; graph comparators always relabel single images")
    cp.add_argument("--alpha", type=float, default=0.05,
                    help="significance level of the decision; p-values are Holm-adjusted across comparators "
                    "(default 0.05)")
    cp.add_argument("--plan", action="store_true",
                    help="estimate, by subsampling, how many images per side reach 80%% power at the observed "
                    "effect (per comparator)")
    cp.add_argument("--no-atlas", action="store_true",
                    help="leave out the atlas (where A and B differ), which every compare runs beside --methods")
    cp.add_argument("--fail-on-difference", action="store_true",
                    help="exit with status 3 when an adjusted p-value is below --alpha (to gate a CI job)")
    cp.add_argument("--report", type=Path, default=None,
                    help="HTML report file (default OUT/report.html)")
    sm = sub.add_parser("summarise", help="save a dataset's statistics once, to compare against many",
                        description="Summarise dataset A for later comparisons: bench summarise A --save A.bench, "
                        "then bench compare A.bench B. The file holds each comparator's statistics (arrays + "
                        "JSON, never a pickle) and what they depend on (extractor, weights, precision, "
                        "method versions and parameters).")
    sm.add_argument("a", help="the dataset to summarise")
    sm.add_argument("--save", type=Path, required=True, metavar="FILE.bench", help="where to write the summary")
    _common_data_options(sm)
    du = sub.add_parser("duplicates", help="near-duplicate groups within a set, and across two (leakage)",
                        description="Find near-duplicates within DIR, and with DIR2 across the two (train/test "
                        "leakage): a summary, a CSV path_a,path_b,distance,group (and its sidecar of unreadable "
                        "files skipped), a gallery in the report, and with --keep the files one would remove "
                        "(nothing is deleted). DIR: a folder, imagefolder:PATH, folder:PATH, wds:SHARDS or hf:PATH.")
    du.add_argument("dir", help="the set to search")
    du.add_argument("dir2", nargs="?", default=None, help="a second set: pairs across the two are leakage")
    du.add_argument("--method", default="wavelet", metavar="M",
                    help="wavelet (wavelet-knn: JPEG, shifted, brightened and cropped copies; default) | phash "
                    "(imagededup's PHash, Hamming distance <= 10)")
    du.add_argument("--out", type=Path, default=Path("results/duplicates"),
                    help="folder for duplicates.csv, its sidecar and remove.txt (default results/duplicates)")
    du.add_argument("--report", type=Path, default=None, help="HTML report file (default OUT/report.html)")
    du.add_argument("--keep", default=None, metavar="POLICY", help="first | largest | sharpest: the one image "
                    "kept per group; the others are listed in OUT/remove.txt (with DIR2, DIR's images are kept)")
    du.add_argument("--workers", type=int, default=None, metavar="N",
                    help="decoding worker processes (default: one per core; 0 = in the main process)")
    sub.add_parser("list", help="list runnable methods (summarisers and comparators)")
    sub.add_parser("plugins", help="list plugins with version, status and errors")
    sub.add_parser("datasets", help="list datasets and whether their roots are configured")
    sub.add_parser("extractors", help="list feature extractors")
    lb = sub.add_parser("leaderboard", help="regenerate leaderboard tables from records")
    lb.add_argument("results", nargs="?", type=Path, default=Path("results"), help="records directory")
    lb.add_argument("-o", "--out", type=Path, default=None,
                    help="output directory (default RESULTS/leaderboard: beside the records, never over "
                         "tables elsewhere)")
    rp = sub.add_parser("report", help="render a run's records and artefacts as one self-contained HTML page")
    rp.add_argument("run_dir", type=Path, help="records directory of a run (its --out)")
    rp.add_argument("-o", "--out", type=Path, default=None, help="output file (default RUN_DIR/report.html)")
    ck = sub.add_parser("check", help="run the conformance checks on a method (for plugin authors)")
    ck.add_argument("method")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:   # argparse's one-line error (exit 2), --help or --version (0)
        return int(exc.code or 0)
    args.argv = argv
    level = _log_level(os.environ.get("BENCH_LOG") or "WARNING")
    if level is None:
        err_console.print(f"[bold red]error:[/] BENCH_LOG={escape(repr(os.environ['BENCH_LOG']))} is not a log "
                          "level; use DEBUG, INFO, WARNING, ERROR or CRITICAL (or unset it)")
        return 2
    logging.basicConfig(level=level)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return COMMANDS[args.command](args)
    except BenchError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
        return 2
    except KeyboardInterrupt:
        if args.command == "run":
            err_console.print("[bold yellow]interrupted:[/] finished cells are saved; rerun with --resume to continue")
        else:
            err_console.print("[bold yellow]interrupted:[/] nothing half-written was kept; run the command again")
        return 130


def _log_level(text: str) -> int | None:
    """``BENCH_LOG`` as a logging level (a name in any case, or a number), None when it is neither."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    level = logging.getLevelName(text.upper())
    return level if isinstance(level, int) else None


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
    from bench.context import DEFAULT_EXTRACTOR
    from bench.plan import DEFAULT_DATASETS, DEFAULT_METHODS, RunConfig
    from bench.runner import Runner

    cfg = RunConfig(
        methods=args.methods or list(DEFAULT_METHODS), datasets=args.datasets or list(DEFAULT_DATASETS),
        extractor=args.extractor or DEFAULT_EXTRACTOR, weights=args.weights, device=args.device,
        seeds=args.seeds, limit=args.limit, out=args.out, resume=args.resume, preset=args.preset,
        settings=args.settings, batch_size=args.batch_size, cache_dir=args.cache_dir, no_cache=args.no_cache,
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
    failed = [r.record for r in results if r.record.status == "error"]
    console.print(f"{len(results)} cells ({sum(r.skipped for r in results)} resumed, {len(failed)} failed); "
                  f"records in {cfg.out}/ · tables: bench leaderboard {cfg.out}")
    for rec in failed:
        err_console.print(f"[bold red]error:[/] {escape(rec.method.name)} on {escape(rec.dataset.name)} seed "
                          f"{rec.seed}: {escape(rec.error or '')}")
    # exit 1: a method crashed (a bug; traceback beside its record); 2: a cell's input was bad
    return 1 if any(r.error_kind == "crash" for r in failed) else 2 if failed else 0


def _print_summary(results) -> None:
    from bench.metrics import METRICS

    shown = [m for m, info in METRICS.items() if info.summary and any(m in r.record.metrics for r in results)]
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


def _compare_config(args, **extra):
    from bench.compare import CompareConfig
    from bench.context import DEFAULT_EXTRACTOR

    return CompareConfig(a=args.a, methods=args.methods, extractor=args.extractor or DEFAULT_EXTRACTOR,
                         weights=args.weights, device=args.device, seed=args.seed, limit=args.limit,
                         preset=args.preset, settings=args.settings, batch_size=args.batch_size,
                         precision=args.precision, workers=args.workers, decode=args.decode, out=args.out,
                         cache_dir=args.cache_dir, no_cache=args.no_cache, strict_plugins=args.strict_plugins,
                         progress=not args.no_progress and console.is_terminal, **extra)


def cmd_compare(args) -> int:
    """Under torchrun the ranks join the group and rank 0 alone compares (one table, one set of
    records); the draws are not split across ranks."""
    from bench import distributed
    from bench.compare import CompareRun

    cfg = _compare_config(args, b=args.b, per_class=args.per_class, permutations=args.permutations,
                          bootstrap=args.bootstrap, alpha=args.alpha, plan=args.plan, report=args.report,
                          blocks=args.blocks, atlas=not args.no_atlas)
    if os.environ.get("RANK", "0") != "0":
        console.quiet = True
    try:
        run = CompareRun(cfg, regs=_regs(args), echo=lambda m: err_console.print(f"[dim]{escape(m)}[/]"))
        if not distributed.context().is_main:
            return 0
        with distributed.solo():
            return _compare(args, cfg, run)
    finally:
        distributed.shutdown()


def _compare(args, cfg, run) -> int:
    from bench.compare import EXIT_DIFFERENT
    from bench.report import build_report

    console.print(f"bench {__version__} · compare [bold]{escape(run.a.name)}[/] (n={run.a.n}) with "
                  f"[bold]{escape(run.b.name)}[/] (n={run.b.n}) · extractor {cfg.extractor} · device {run.device} · "
                  f"methods {','.join(run.methods)}")
    recs = run.compare()
    table = Table(title=f"A = {run.a.name}  vs  B = {run.b.name}")
    for col in ("method", "score", "p", "p adj.", "95% CI", "null", "n_A", "n_B", "what differs most", "status"):
        table.add_column(col, overflow="fold")
    for rec in recs:
        m = {k: v.value for k, v in rec.metrics.items()}
        ci = f"[{m['ci_low']:.4g}, {m['ci_high']:.4g}]" if "ci_low" in m else ""
        null = rec.tables.get("null", [{}])[0]
        top = (rec.tables.get("findings") or [{}])[0].get("title", "")
        status = "ok" if rec.status == "ok" else f"[red]{escape(rec.error or '')}[/]"
        table.add_row(rec.method.name, f"{m['score']:.4g}" if "score" in m else "",
                      f"{m['p_value']:.3g}" if "p_value" in m else "—",
                      f"{m['p_adjusted']:.3g}" if "p_adjusted" in m else "—", ci,
                      f"{null.get('draws', 0)} draws" if null.get("draws") else "none", str(run.a.n), str(run.b.n),
                      escape(top), status)
    console.print(table)
    if cfg.plan:
        _print_plan(recs, cfg.alpha)
    different = run.different(recs)
    console.print(f"decision at α = {cfg.alpha:g} (Holm across comparators): "
                  + ("[bold]A and B differ[/]" if different else "no difference detected"))
    report = build_report(cfg.out, cfg.report, regs=run.regs)
    console.print(f"records in {cfg.out}/compare/ · report: {report}")
    failed = [r for r in recs if r.status != "ok"]
    for rec in failed:
        err_console.print(f"[bold red]error:[/] {escape(rec.method.name)}: {escape(rec.error or '')}")
    if failed:
        return 2
    return EXIT_DIFFERENT if args.fail_on_difference and different else 0


def _print_plan(recs, alpha: float) -> None:
    table = Table(title=f"how many images: 80 % power at α = {alpha:g}, at the observed effect")
    for col in ("method", "n_A needed", "n_B needed", "power now", "how"):
        table.add_column(col, overflow="fold")
    for rec in recs:
        rows = rec.tables.get("plan")
        if not rows:
            continue
        m = {k: v.value for k, v in rec.metrics.items()}
        need_a = f"{m['n_for_power_a']:.0f}" if "n_for_power_a" in m else "—"
        need_b = f"{m['n_for_power_b']:.0f}" if "n_for_power_b" in m else "—"
        table.add_row(rec.method.name, need_a, need_b, f"{rows[-1]['power']:.2f}", escape(rows[-1]["how"]))
    console.print(table)


def cmd_summarise(args) -> int:
    """Under torchrun every rank runs it (sharded extraction, block states by rank); rank 0 writes."""
    from bench import distributed

    main_rank = os.environ.get("RANK", "0") == "0"
    if not main_rank:
        console.quiet = True   # rank 0 speaks; the others only their own errors
    failed = False
    try:
        return _summarise(args)
    except distributed.SharedError:
        if main_rank:
            raise   # rank 0 prints the line and exits 2 first
        failed = True   # quiet: wait for rank 0 to leave, so torchrun does not stop it before it speaks
        return 2
    finally:
        distributed.shutdown(failed=failed)


def _summarise(args) -> int:
    from bench.compare import CompareRun

    run = CompareRun(_compare_config(args, save=args.save), regs=_regs(args),
                     echo=lambda m: err_console.print(f"[dim]{escape(m)}[/]"))
    path = run.summarise()
    if path is not None:   # None: a torchrun rank other than 0
        console.print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB): {', '.join(run.methods)} statistics of "
                      f"{run.a.name} (n={run.a.n}); compare with: bench compare {path} OTHER")
    return 0


def cmd_duplicates(args) -> int:
    from bench.duplicates import DuplicatesConfig, run, summary_lines

    cfg = DuplicatesConfig(a=args.dir, b=args.dir2, method=args.method, out=args.out, report=args.report,
                           keep=args.keep, workers=args.workers)
    result = run(cfg, warn=lambda m: err_console.print(f"[yellow]warning:[/] {escape(m)}"))
    console.print(f"bench {__version__} · duplicates")
    for line in summary_lines(result, cfg):
        console.print(escape(line))
    return 0


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
    table = Table(title="datasets (also: imagefolder:PATH, folder:PATH)",
                  caption="a duplicates.csv (path_a,path_b[,kind]) in an image folder grades duplicate precision / "
                          "recall on it")
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
    from bench.runstore import RunStore, check_writable_dir

    if not args.results.is_dir():
        raise BenchError(f"no records directory {str(args.results)!r}; run `bench run` first or pass the "
                         "directory that holds the records")
    if args.out is None:
        args.out = args.results / "leaderboard"
    check_writable_dir(args.out, "-o")
    if not RunStore(args.results).record_files():
        raise BenchError(f"no run records (seed*.json) under {str(args.results)!r}; nothing written to {args.out}")
    written, problems = leaderboard.write(args.results, args.out)
    for p in problems:
        err_console.print(f"[yellow]warning:[/] {escape(p)} (left out of the tables)")
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


COMMANDS = {"run": cmd_run, "compare": cmd_compare, "summarise": cmd_summarise, "duplicates": cmd_duplicates,
            "list": cmd_list,
            "plugins": cmd_plugins, "datasets": cmd_datasets, "extractors": cmd_extractors,
            "leaderboard": cmd_leaderboard, "report": cmd_report, "check": cmd_check}

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

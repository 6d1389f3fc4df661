"""Command line: ``python -m lightning_filterviz report <log_dir> [-o OUTPUT.html] [--filter-layer LAYER]``.

Also installed as the ``filterviz-report`` console script, which takes the report's
arguments directly: ``filterviz-report <log_dir> [-o OUTPUT.html] [--filter-layer LAYER]``.
With ``--feature-vis CHECKPOINT``, the model in a Lightning checkpoint gets its feature
visualizations made first (this needs torch; the report itself does not).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Optional, Sequence

from lightning_filterviz.report.build import ReportError, ReportWarning, build_report
from lightning_filterviz.report.runs import find_history_dirs

__all__ = ["main"]

PROGRAM = "filterviz report"
REPORT_SCRIPT = "filterviz-report"


def _add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "log_dir",
        help="a trainer log dir (or a parent of several runs, or the filterviz/history dir itself)",
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="OUTPUT.html",
        help="the HTML file to write (default: <log_dir>/filterviz_report.html)",
    )
    parser.add_argument(
        "--filmstrip-layers",
        nargs="+",
        metavar="LAYER",
        help="layer names or fnmatch patterns to draw filmstrips of (default: the first conv layer)",
    )
    parser.add_argument(
        "--examples-filter",
        type=int,
        default=0,
        metavar="N",
        help="the filter whose dataset examples are shown over the validation runs (default: 0)",
    )
    parser.add_argument(
        "--filter-layer",
        metavar="LAYER",
        help="the conv layer of the filter page: each of its filters' weights, feature maps, dataset "
        "examples and curves over the run (default: the first conv layer)",
    )
    parser.add_argument(
        "--feature-vis",
        metavar="CHECKPOINT",
        help="first make feature visualizations of the model in this Lightning checkpoint (saved with "
        "FilterMonitor attached) and add them to the run's history; needs torch and can take minutes",
    )
    parser.add_argument(
        "--featvis-layers",
        nargs="+",
        metavar="LAYER",
        help="with --feature-vis: conv names or fnmatch patterns to visualize (default: the first conv layer)",
    )
    parser.add_argument(
        "--featvis-steps",
        type=int,
        default=256,
        metavar="N",
        help="with --feature-vis: optimization steps per visualization (default: 256)",
    )
    parser.add_argument(
        "--model",
        metavar="MODULE:CLASS",
        help="with --feature-vis: the LightningModule class as package.module:Class or path/to/file.py:Class "
        "(default: the one the checkpoint names)",
    )


def build_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    """The ``python -m lightning_filterviz`` parser, with its ``report`` subcommand.

    Args:
        prog: the program name shown in usage; default ``python -m lightning_filterviz``.

    Returns:
        The parser.
    """
    parser = argparse.ArgumentParser(
        prog=prog or "python -m lightning_filterviz",
        description="Tools for the files lightning_filterviz writes during training.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    report = commands.add_parser(
        "report",
        help="write a self-contained HTML report of a run's filter history",
        description="Write one self-contained HTML page of the filter history saved by FilterMonitor.",
    )
    _add_report_arguments(report)
    return parser


def build_report_parser() -> argparse.ArgumentParser:
    """The ``filterviz-report`` parser: the ``report`` subcommand's arguments at top level."""
    parser = argparse.ArgumentParser(
        prog=REPORT_SCRIPT,
        description="Write one self-contained HTML page of the filter history saved by FilterMonitor.",
    )
    _add_report_arguments(parser)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> tuple[Optional[argparse.Namespace], int]:
    """Parse, turning argparse's SystemExit (usage errors, --help) into an exit code to return."""
    try:
        return parser.parse_args(argv), 0
    except SystemExit as exit_:
        return None, exit_.code if isinstance(exit_.code, int) else 2


def run_report(args: argparse.Namespace) -> int:
    """Build the report (after making ``--feature-vis``'s visualizations, if asked); print its
    path, or one error line on stderr.

    Args:
        args: parsed ``log_dir``, ``output``, ``filmstrip_layers``, ``examples_filter``,
            ``filter_layer``, ``feature_vis``, ``featvis_layers``, ``featvis_steps`` and ``model``.

    Returns:
        0 on success, 2 for bad input.
    """
    if args.feature_vis is not None:
        made = _feature_vis(args)
        if made is None:
            return 2
        print(f"{PROGRAM}: wrote {made}", file=sys.stderr)
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ReportWarning)
            path = build_report(
                args.log_dir, args.output, args.filmstrip_layers, args.examples_filter, args.filter_layer
            )
    except ReportError as error:
        # One line, no traceback: bad input is the user's to fix, not a bug to debug.
        print(f"{PROGRAM}: {error}", file=sys.stderr)
        return 2
    finally:
        # A damaged file costs its part of the report: one line each, naming it, and the rest is drawn.
        for warning in caught:
            if issubclass(warning.category, ReportWarning):
                print(f"{PROGRAM}: {warning.message}", file=sys.stderr)
            else:  # not the report's own: shown as it would have been
                warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    print(path)
    return 0


def _feature_vis(args: argparse.Namespace) -> Optional[str]:
    """Make ``--feature-vis``'s visualizations into the run's history; ``None`` (after one error
    line) when they cannot be made."""
    histories = find_history_dirs(args.log_dir) if os.path.isdir(args.log_dir) else []
    if len(histories) != 1:
        found = "no run" if not histories else f"{len(histories)} runs"
        print(f"{PROGRAM}: --feature-vis needs the log dir of one run; {args.log_dir} holds {found}.", file=sys.stderr)
        return None
    # Imported here: the report itself needs no torch.
    from lightning_filterviz.integration.offline_feature_vis import CheckpointError, feature_vis_from_checkpoint

    print(f"{PROGRAM}: making the feature visualizations of {args.feature_vis} (this can take minutes)", file=sys.stderr)
    try:
        return str(
            feature_vis_from_checkpoint(
                args.feature_vis,
                histories[0],
                layers=args.featvis_layers,
                model_class=args.model,
                steps=args.featvis_steps,
            )
        )
    except (CheckpointError, ValueError) as error:
        print(f"{PROGRAM}: {error}", file=sys.stderr)
        return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line.

    Invoked as ``filterviz-report`` (the console script), the arguments are the report's;
    otherwise the first one is the subcommand (``report``).

    Args:
        argv: the arguments, without the program name; default ``sys.argv[1:]``.

    Returns:
        The exit code: 0 on success, 2 for a usage error or bad input.
    """
    if argv is None and os.path.basename(sys.argv[0]).startswith(REPORT_SCRIPT):
        args, code = _parse(build_report_parser(), None)
        return run_report(args) if args is not None else code
    parser = build_parser()
    args, code = _parse(parser, argv)
    if args is None:
        return code
    if args.command is None:
        # No command: show the commands there are, not only a usage line.
        parser.print_help(sys.stderr)
        return 2
    return run_report(args)


if __name__ == "__main__":
    sys.exit(main())

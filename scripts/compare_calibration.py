#!/usr/bin/env python3
"""Draw several calibration JSONs (from --calibration-json or ls-vision) on one reliability diagram.

    python scripts/compare_calibration.py out.png "hard targets=hard.json" "LS 0.1=ls.json"

Each argument is LABEL=PATH; the first curve is drawn without markers (the paper's Fig. 2/3).
"""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from ls_plugins import cli  # noqa: E402

SUMMARY_KEYS = ("ece", "nll", "accuracy", "confidence")
BIN_KEYS = ("count", "confidence", "accuracy")


def labelled_path(text: str) -> tuple[str, str]:
    """argparse type for LABEL=PATH (the label may itself hold '=')."""
    label, sep, path = text.rpartition("=")
    if not sep or not label or not path:
        raise cli.bad_value("LABEL=PATH", "must be a label, '=' and a JSON file", repr(text))
    return label, cli.check_input_file(f"LABEL=PATH {label}", path)


def read_curve(label: str, path: str) -> dict:
    """The calibration statistics in ``path`` (a ``CalibrationStats.to_dict()`` JSON)."""
    option = f"LABEL=PATH {label}"
    try:
        with open(path, encoding="utf-8") as f:
            stats = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise cli.bad_value(option, "must be a calibration JSON", f"{path} ({cli.first_line(err)})") from None
    bins = stats.get("bins") if isinstance(stats, dict) else None
    if (not isinstance(bins, list) or not all(isinstance(b, dict) and all(k in b for k in BIN_KEYS)
                                              for b in bins)
            or not all(k in stats for k in SUMMARY_KEYS)):
        raise cli.bad_value(option, f"must be a calibration JSON (keys {', '.join(SUMMARY_KEYS)}, "
                                    f"bins)", path)
    if not all(isinstance(stats[k], (int, float)) and not isinstance(stats[k], bool)
               for k in SUMMARY_KEYS):
        raise cli.bad_value(option, "must hold scored predictions (numbers for "
                                    f"{', '.join(SUMMARY_KEYS)})", path)
    return stats


def build_parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(prog="compare_calibration.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="PNG to write")
    parser.add_argument("curves", nargs="+", metavar="LABEL=PATH",
                        type=cli.checked("LABEL=PATH", labelled_path))
    parser.add_argument("--title", default="Token-level reliability (teacher-forced)")
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    labels = [label for label, _ in args.curves]
    with cli.exit_on_usage_error():
        cli.check_output_file("OUT", args.out)
        duplicated = sorted({label for label in labels if labels.count(label) > 1})
        if duplicated:
            raise cli.bad_value("LABEL=PATH", "labels must differ", f"{duplicated[0]!r} twice")
        curves = {label: read_curve(label, path) for label, path in args.curves}

    from ls_plugins.plots import reliability_diagram
    reliability_diagram(curves, args.out, title=args.title)
    for label, stats in curves.items():
        print(f"{label}: ECE {stats['ece']:.4f}  NLL {stats['nll']:.4f}  acc {stats['accuracy']:.4f}  "
              f"conf {stats['confidence']:.4f}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Draw several calibration JSONs (from --calibration-json or ls-vision) on one reliability diagram.

    python scripts/compare_calibration.py out.png "hard targets=hard.json" "LS 0.1=ls.json"

Each argument is LABEL=PATH; the first curve is drawn without markers (the paper's Fig. 2/3).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from ls_plugins.plots import reliability_diagram  # noqa: E402


def labelled_path(text: str) -> tuple[str, str]:
    label, sep, path = text.rpartition("=")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"expected LABEL=PATH, got {text!r}")
    if not os.path.isfile(path):
        raise argparse.ArgumentTypeError(f"no such file: {path}")
    return label, path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="PNG to write")
    parser.add_argument("curves", nargs="+", type=labelled_path, metavar="LABEL=PATH")
    parser.add_argument("--title", default="Token-level reliability (teacher-forced)")
    args = parser.parse_args()
    curves = {}
    for label, path in args.curves:
        with open(path) as f:
            curves[label] = json.load(f)
    reliability_diagram(curves, args.out, title=args.title)
    for label, stats in curves.items():
        print(f"{label}: ECE {stats['ece']:.4f}  NLL {stats['nll']:.4f}  acc {stats['accuracy']:.4f}  "
              f"conf {stats['confidence']:.4f}")


if __name__ == "__main__":
    main()

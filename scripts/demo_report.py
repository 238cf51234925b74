#!/usr/bin/env python3
"""The demo's judgement: the paper's five claims against the JSON files the demo's stages wrote.

Reads ``WORK`` (``scripts/demo.py``'s output), writes ``WORK/claims.json`` (every number of the
report, each a value taken from or computed from those JSON files, rounded as printed) and
``WORK/report.md`` rendered from ``claims.json`` alone.

Verdicts.  Each comparison is a difference ``d`` with its 95% percentile interval from the
Poisson bootstrap over sentences (translation) or images (vision); two models scored on the same
data with the same seed share their replicate weights, so ``d``'s interval is *paired*:
- a claim that ``d > 0`` (or ``< 0``) is *held* when the whole interval is on that side of 0,
  *not held* when it is on the other side, *inconclusive* when it contains 0;
- claim 2 ("temperature scaling reaches a similar ECE") is *held* when the interval of
  ``ECE(hard at T*) - ECE(label smoothing)`` lies below ``SIMILAR_ECE`` (scaling is at most that
  much worse, or better), *not held* when it lies above, *inconclusive* otherwise;
- tightness has a paired interval when the projection wrote bootstrap replicates (both models
  project the same examples); mutual information has none (one estimate per model and epoch):
  rows without an interval say *held* / *not held* on the point estimates and are marked so.

Usage: python scripts/demo_report.py WORK
"""
from __future__ import annotations

import datetime
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from ls_plugins import cli  # noqa: E402
from ls_plugins.bootstrap import paired_difference_interval  # noqa: E402
from ls_plugins.bleu_bootstrap import (bleu_with_interval, paired_bleu_interval,  # noqa: E402
                                       read_generate_output, sentence_statistics)
from ls_plugins.calibration import paired_replicate_interval  # noqa: E402

LEVEL = 0.95
SIMILAR_ECE = 0.01
DIGITS = 4


def r(x, digits: int = DIGITS):
    return None if x is None else round(float(x), digits)


def read(path: Path):
    return json.loads(Path(path).read_text())


def with_interval(value, interval, digits: int = DIGITS) -> dict:
    return {"value": r(value, digits), "interval": [r(x, digits) for x in interval]}


def verdict(interval, direction: int) -> str:
    """``direction`` +1: the claim is ``d > 0``; -1: ``d < 0``."""
    low, high = (direction * x for x in interval)
    low, high = min(low, high), max(low, high)
    if low > 0:
        return "held"
    if high < 0:
        return "not held"
    return "inconclusive"


def difference(a: dict, b: dict, metric: str, digits: int = DIGITS) -> dict:
    """``metric(a) - metric(b)`` of two ``CalibrationStats.to_dict`` results, paired interval."""
    return with_interval(a[metric] - b[metric], paired_replicate_interval(a, b, metric, LEVEL),
                         digits)


# -- translation ------------------------------------------------------------------------------
class Translation:
    def __init__(self, work: Path):
        self.dir = work / "translation"
        self.generated = self.dir / "generate"

    def calibration(self, name: str) -> dict:
        return read(self.generated / f"{name}.json")

    def bleu_stats(self, path: Path):
        """Sentence ids (sorted), their sentence-level BLEU statistics, their references."""
        pairs = read_generate_output(path)
        ids = sorted(pairs)
        references = [pairs[i][1] for i in ids]
        return ids, sentence_statistics([pairs[i][0] for i in ids], references), references

    @staticmethod
    def check_paired(a: tuple, b: tuple, what: str) -> None:
        if a[0] != b[0] or a[2] != b[2]:
            raise SystemExit(f"demo_report: error: {what}: the two translation outputs hold "
                             "different sentences or references; cannot pair them")

    def claim_ece(self) -> dict:
        hard, ls = self.calibration("hard"), self.calibration("ls")
        rows = {}
        for reading, pick in (("reference", lambda d: d), ("hypothesis", lambda d: d["hypothesis"])):
            a, b = pick(hard), pick(ls)
            d = difference(a, b, "ece")
            rows[reading] = {"hard": with_interval(a["ece"], a["intervals"]["ece"]),
                             "ls": with_interval(b["ece"], b["intervals"]["ece"]),
                             "hard_minus_ls": d, "verdict": verdict(d["interval"], +1)}
        return rows

    def claim_temperature(self) -> dict:
        scaled, ls = self.calibration("hard-fitted-T"), self.calibration("ls")
        d = difference(scaled, ls, "ece")
        return {"temperature": r(scaled["temperature"], 3),
                "hard_at_T": with_interval(scaled["ece"], scaled["intervals"]["ece"]),
                "ls": with_interval(ls["ece"], ls["intervals"]["ece"]),
                "scaled_minus_ls": d, "verdict": similar_verdict(d["interval"])}

    def claim_bleu(self, bootstrap: int, seed: int) -> dict:
        sweep = read(self.dir / "sweep" / "sweep.json")["points"]
        best = {}
        for name in ("hard", "ls"):
            points = [p for p in sweep if p["model"] == name]
            top = max(points, key=lambda p: p["bleu"])
            ids, stats, references = self.bleu_stats(self.generated / f"{name}-best-bleu.txt")
            best[name] = {"temperature": r(top["temperature"], 3), "ids": ids, "stats": stats,
                          "references": references,
                          "sweep_bleu": r(top["bleu"], 2),
                          **with_interval(*self.bleu_interval(ids, stats, bootstrap, seed), 2)}
        self.check_paired(*((best[n]["ids"], None, best[n]["references"]) for n in ("ls", "hard")),
                          "claim 3")
        d = paired_bleu_interval(best["ls"]["stats"], best["hard"]["stats"], best["hard"]["ids"],
                                 bootstrap, seed, LEVEL)
        bleu_gap = with_interval(best["ls"]["value"] - best["hard"]["value"], d, 2)
        hard_fitted, ls = self.calibration("hard-fitted-T"), self.calibration("ls")
        nll = difference(ls, hard_fitted, "nll")
        curve = {name: [{"temperature": p["temperature"], "bleu": r(p["bleu"], 2),
                         "nll": r(p["calibration"]["nll"]), "ece": r(p["calibration"]["ece"]),
                         "hypothesis_ece": r(p["hypothesis_calibration"]["ece"])}
                        for p in sweep if p["model"] == name] for name in ("hard", "ls")}
        for entry in best.values():
            del entry["ids"], entry["stats"], entry["references"]
        return {"best": best, "ls_minus_hard_bleu": bleu_gap,
                "bleu_verdict": verdict(bleu_gap["interval"], +1),
                "nll": {"ls_at_1": with_interval(ls["nll"], ls["intervals"]["nll"]),
                        "hard_at_T": with_interval(hard_fitted["nll"],
                                                   hard_fitted["intervals"]["nll"]),
                        "T": r(hard_fitted["temperature"], 3), "ls_minus_hard": nll,
                        "verdict": verdict(nll["interval"], +1)},
                "sweep": curve}

    @staticmethod
    def bleu_interval(ids, stats, bootstrap, seed):
        result = bleu_with_interval(stats, ids, bootstrap, seed, LEVEL)
        return result["bleu"], result["interval"]

    def claim_distillation(self, bootstrap: int, seed: int) -> dict:
        distill = self.dir / "distill"
        match = read(distill / "match-gamma.json")
        students = {}
        for teacher in ("hard", "ls"):
            ids, stats, references = self.bleu_stats(distill / f"student-of-{teacher}.txt")
            students[teacher] = (ids, stats, references,
                                 self.bleu_interval(ids, stats, bootstrap, seed))
        self.check_paired(students["hard"], students["ls"], "claim 4")
        (ids, hard_stats, _, hard_bleu), (_, ls_stats, _, ls_bleu) = students["hard"], students["ls"]
        d = with_interval(hard_bleu[0] - ls_bleu[0],
                          paired_bleu_interval(hard_stats, ls_stats, ids, bootstrap, seed, LEVEL), 2)
        return {"gamma": r(match["target_gamma"]), "hard_teacher_T": r(match["temperature"], 3),
                "hard_teacher_gamma": r(match["gamma"]),
                "student_of_hard": with_interval(*hard_bleu, 2),
                "student_of_ls": with_interval(*ls_bleu, 2),
                "hard_minus_ls": d, "verdict": verdict(d["interval"], +1)}

    def claim_tightness(self) -> dict:
        projection = read(self.dir / "projection" / "fig1.json")
        rows = {}
        for split in ("train", "valid"):
            rows[split] = tightness_row(projection["models"]["hard"][split],
                                        projection["models"]["ls"][split])
        return {"tokens": projection["tokens"], "splits": rows}


# -- vision ------------------------------------------------------------------------------------
class Vision:
    def __init__(self, work: Path):
        self.dir = work / "vision"

    def final(self, run: str) -> dict:
        return read(self.dir / run / "metrics.json")["final"]

    def claim_ece(self, hard_run: str, ls_run: str, direction: int = +1) -> dict:
        hard, ls = self.final(hard_run)["test"], self.final(ls_run)["test"]
        d = difference(hard, ls, "ece")
        return {"hard": with_interval(hard["ece"], hard["intervals"]["ece"]),
                "ls": with_interval(ls["ece"], ls["intervals"]["ece"]),
                "hard_overconfidence": r(hard["confidence"] - hard["accuracy"]),
                "ls_overconfidence": r(ls["confidence"] - ls["accuracy"]),
                "hard_accuracy": r(hard["accuracy"]), "ls_accuracy": r(ls["accuracy"]),
                "hard_minus_ls": d, "verdict": verdict(d["interval"], direction)}

    def claim_temperature(self) -> dict:
        hard, ls = self.final("fashion/mlp-ls0"), self.final("fashion/mlp-ls0.05")
        d = difference(hard["test_scaled"], ls["test"], "ece")
        return {"temperature": r(hard["temperature"], 3),
                "hard_at_T": with_interval(hard["test_scaled"]["ece"],
                                           hard["test_scaled"]["intervals"]["ece"]),
                "ls": with_interval(ls["test"]["ece"], ls["test"]["intervals"]["ece"]),
                "scaled_minus_ls": d, "verdict": similar_verdict(d["interval"])}

    def claim_distillation(self, alphas) -> dict:
        rows = {}
        for alpha in alphas:
            hard = self.final(f"fig5/student-hard-teacher-for-ls{alpha}")
            ls = self.final(f"fig5/student-ls-teacher{alpha}")
            d = difference(hard["test"], ls["test"], "accuracy")
            rows[str(alpha)] = {
                "hard_teacher_gamma": r(hard.get("teacher_gamma")),
                "ls_teacher_gamma": r(ls.get("teacher_gamma")),
                "student_of_hard": with_interval(hard["test"]["accuracy"],
                                                 hard["test"]["intervals"]["accuracy"]),
                "student_of_ls": with_interval(ls["test"]["accuracy"],
                                               ls["test"]["intervals"]["accuracy"]),
                "hard_minus_ls": d, "verdict": verdict(d["interval"], +1)}
        return rows

    def claim_tightness_and_mi(self) -> dict:
        projection = read(self.dir / "fashion" / "fig1.json")
        by_alpha = {run["label_smoothing"]: run["splits"] for run in projection["runs"]}
        splits = {}
        for split in by_alpha[0]:
            splits[split] = tightness_row(by_alpha[0][split], by_alpha[0.05][split])
        mi = {}
        for name, run in (("hard", "fashion/mi-ls0"), ("ls", "fashion/mi-ls0.1")):
            history = read(self.dir / run / "metrics.json")["history"]
            probed = [h for h in history if "mutual_information" in h]
            mi[name] = {"epoch": probed[-1]["epoch"], "value": r(probed[-1]["mutual_information"]),
                        "curve": [r(h["mutual_information"]) for h in probed]}
        mi["verdict"] = point_verdict(mi["hard"]["value"] - mi["ls"]["value"])
        return {"classes": projection["class_names"], "splits": splits, "mutual_information": mi}


def similar_verdict(interval) -> str:
    low, high = interval
    if high <= SIMILAR_ECE:
        return "held"
    if low > SIMILAR_ECE:
        return "not held"
    return "inconclusive"


def tightness_row(hard: dict, ls: dict) -> dict:
    """Tightness of both models (smaller = tighter) and ``hard - ls`` with its paired interval
    when the projection wrote bootstrap replicates (both models saw the same examples)."""
    row = {"hard": r(hard["tightness"]), "ls": r(ls["tightness"])}
    if "tightness_bootstrap" not in hard:
        return {**row, "verdict": point_verdict(hard["tightness"] - ls["tightness"])}
    a, b = hard["tightness_bootstrap"], ls["tightness_bootstrap"]
    if (a["bootstrap"], a["seed"]) != (b["bootstrap"], b["seed"]):
        raise SystemExit("demo_report: error: tightness replicates of the two models differ in "
                         "bootstrap or seed; cannot pair them")
    d = with_interval(hard["tightness"] - ls["tightness"],
                      paired_difference_interval(a["replicates"], b["replicates"], LEVEL))
    return {"hard": with_interval(hard["tightness"], hard["tightness_interval"]),
            "ls": with_interval(ls["tightness"], ls["tightness_interval"]),
            "hard_minus_ls": d, "verdict": verdict(d["interval"], +1)}


def point_verdict(expected_positive: float) -> str:
    return ("held" if expected_positive > 0 else "not held") + " (point estimate)"


# -- assembling ------------------------------------------------------------------------------
def build_claims(work: Path) -> dict:
    settings = read(work / "settings.json")
    bootstrap, seed = settings["bootstrap"], settings["seed"]
    translation, vision = Translation(work), Vision(work)
    stages = sorted((read(p) for p in (work / "stages").glob("*.json")),
                    key=lambda s: s["finished"])
    fashion_hard = vision.final("fashion/mlp-ls0")
    return {
        "preset": settings["preset"], "settings": settings,
        "written": datetime.datetime.now().isoformat(timespec="seconds"),
        "level": LEVEL, "similar_ece_margin": SIMILAR_ECE,
        "stages": [{"stage": s["stage"], "seconds": s["seconds"]} for s in stages],
        "total_seconds": r(sum(s["seconds"] for s in stages), 1),
        "total_minutes": r(sum(s["seconds"] for s in stages) / 60, 1),
        "data": {"translation": read(translation.dir / "corpus" / "corpus.json")["pairs"],
                 "fashion_val": fashion_hard["val"]["count"],
                 "fashion_test": fashion_hard["test"]["count"]},
        "paper": {"ece_cifar100": [0.150, 0.024], "ece_en_de": [0.056, 0.019],
                  "temperature_cifar100": {"ece": 0.021, "T": 1.9},
                  "temperature_en_de": {"ece": 0.018, "T": 1.13}},
        "claim1": {"translation": translation.claim_ece(),
                   "fashion": vision.claim_ece("fashion/mlp-ls0", "fashion/mlp-ls0.05"),
                   "digits": vision.claim_ece("digits/smallcnn-ls0", "digits/smallcnn-ls0.1")},
        "claim2": {"translation": translation.claim_temperature(),
                   "fashion": vision.claim_temperature()},
        "claim3": translation.claim_bleu(bootstrap, seed),
        "claim4": {"translation": translation.claim_distillation(bootstrap, seed),
                   "fashion": vision.claim_distillation(settings["fig5_alphas"])},
        "claim5": {"translation": translation.claim_tightness(),
                   "fashion": vision.claim_tightness_and_mi()},
    }


def tightness_text(row: dict) -> str:
    if "hard_minus_ls" not in row:
        return f"hard {row['hard']:.4f}, LS {row['ls']:.4f}"
    return (f"hard {fmt(row['hard'])}, LS {fmt(row['ls'])}; difference "
            f"{fmt(row['hard_minus_ls'])}")


def fmt(entry: dict, digits: int = DIGITS) -> str:
    low, high = entry["interval"]
    return f"{entry['value']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def render(c: dict) -> str:
    """report.md from claims.json alone."""
    t1, f1, d1 = c["claim1"]["translation"], c["claim1"]["fashion"], c["claim1"]["digits"]
    t2, f2 = c["claim2"]["translation"], c["claim2"]["fashion"]
    c3, t4, f4 = c["claim3"], c["claim4"]["translation"], c["claim4"]["fashion"]
    t5, f5 = c["claim5"]["translation"], c["claim5"]["fashion"]
    p = c["paper"]
    lines = ["# When does label smoothing help? The demo's answer", ""]
    if c["preset"] == "quick":
        lines += ["> **QUICK preset**: every stage ran at toy size to check the pipeline. These "
                  "numbers are not meant to show anything about label smoothing.", ""]
    lines += [f"Preset `{c['preset']}`, written {c['written']}, stages' wall time "
              f"{c['total_minutes']:.1f} min. Every interval is a 95% percentile interval of "
              f"a Poisson bootstrap ({c['settings']['bootstrap']} replicates, seed "
              f"{c['settings']['seed']}) over test sentences or test images; a difference of two "
              "models scored on the same data is paired. A verdict is *inconclusive* when the "
              "difference's interval contains 0.", ""]
    lines += ["## Summary", "",
              "| claim | paper | ours | verdict |", "|---|---|---|---|",
              f"| 1. LS lowers ECE at T=1: translation (reference prefix) | EN-DE "
              f"{p['ece_en_de'][0]:.3f} → {p['ece_en_de'][1]:.3f} | {fmt(t1['reference']['hard'])} → "
              f"{fmt(t1['reference']['ls'])}; difference {fmt(t1['reference']['hard_minus_ls'])} | "
              f"{t1['reference']['verdict']} |",
              f"| 1. same, generated hypotheses (Wang et al. 2020) | — | "
              f"{fmt(t1['hypothesis']['hard'])} → {fmt(t1['hypothesis']['ls'])}; difference "
              f"{fmt(t1['hypothesis']['hard_minus_ls'])} | {t1['hypothesis']['verdict']} |",
              f"| 1. LS lowers ECE at T=1: Fashion-MNIST MLP (α=0.05) | CIFAR-100 "
              f"{p['ece_cifar100'][0]:.3f} → {p['ece_cifar100'][1]:.3f} | {fmt(f1['hard'])} → "
              f"{fmt(f1['ls'])}; difference {fmt(f1['hard_minus_ls'])} | {f1['verdict']} |",
              f"| 1. other regime: digits small CNN (α=0.1) | — | {fmt(d1['hard'])} → "
              f"{fmt(d1['ls'])}; difference {fmt(d1['hard_minus_ls'])} | {d1['verdict']} |",
              f"| 2. temperature scaling reaches a similar ECE: translation | EN-DE "
              f"{p['temperature_en_de']['ece']:.3f} at T={p['temperature_en_de']['T']} | "
              f"{fmt(t2['hard_at_T'])} at T={t2['temperature']:.3f}; minus LS "
              f"{fmt(t2['scaled_minus_ls'])} | {t2['verdict']} |",
              f"| 2. same: Fashion-MNIST | CIFAR-100 {p['temperature_cifar100']['ece']:.3f} at "
              f"T={p['temperature_cifar100']['T']} | {fmt(f2['hard_at_T'])} at "
              f"T={f2['temperature']:.3f}; minus LS {fmt(f2['scaled_minus_ls'])} | "
              f"{f2['verdict']} |",
              f"| 3. LS's best BLEU beats hard targets' best over T | Fig. 4: yes | LS "
              f"{fmt(c3['best']['ls'], 2)} (T={c3['best']['ls']['temperature']:g}) vs hard "
              f"{fmt(c3['best']['hard'], 2)} (T={c3['best']['hard']['temperature']:g}); "
              f"difference {fmt(c3['ls_minus_hard_bleu'], 2)} | {c3['bleu_verdict']} |",
              f"| 3. ...although LS's NLL is worse | Fig. 4: yes | LS at T=1 "
              f"{fmt(c3['nll']['ls_at_1'])} vs hard at T={c3['nll']['T']:.3f} "
              f"{fmt(c3['nll']['hard_at_T'])}; difference {fmt(c3['nll']['ls_minus_hard'])} | "
              f"{c3['nll']['verdict']} |",
              f"| 4. an LS teacher distils worse at equal γ: translation | Fig. 5: yes | γ "
              f"{t4['gamma']:.4f}: BLEU student of hard {fmt(t4['student_of_hard'], 2)} vs of LS "
              f"{fmt(t4['student_of_ls'], 2)}; difference {fmt(t4['hard_minus_ls'], 2)} | "
              f"{t4['verdict']} |"]
    for alpha, row in f4.items():
        lines.append(f"| 4. same: Fashion-MNIST, LS teacher α={alpha}, γ {row['ls_teacher_gamma']:.4f} "
                     f"(hard teacher's {row['hard_teacher_gamma']:.4f}) | Fig. 5: yes | accuracy student of "
                     f"hard {fmt(row['student_of_hard'])} vs of LS {fmt(row['student_of_ls'])}; "
                     f"difference {fmt(row['hard_minus_ls'])} | {row['verdict']} |")
    for where, rows in (("translation", t5["splits"]), ("Fashion-MNIST", f5["splits"])):
        for split, row in rows.items():
            lines.append(f"| 5. LS tightens clusters: {where}, {split} (smaller = tighter) | "
                         f"Fig. 1: yes | {tightness_text(row)} | {row['verdict']} |")
    mi = f5["mutual_information"]
    lines += [f"| 5. LS lowers MI(input; logits) late in training: Fashion-MNIST (α=0.1, random "
              f"shifts) | Fig. 6: yes | "
              f"epoch {mi['hard']['epoch']}: hard {mi['hard']['value']:.4f}, LS "
              f"{mi['ls']['value']:.4f} nats | {mi['verdict']} |", ""]
    lines += details(c)
    return "\n".join(lines) + "\n"


def details(c: dict) -> list[str]:
    t1, d1, c3 = c["claim1"]["translation"], c["claim1"]["digits"], c["claim3"]
    t4, t5, f5 = c["claim4"]["translation"], c["claim5"]["translation"], c["claim5"]["fashion"]
    s, data = c["settings"], c["data"]
    lines = ["## Why each verdict", "",
             f"1. ECE at T=1 is measured given the reference prefix (the paper's reading) and on "
             f"the generated hypotheses; the verdicts are {t1['reference']['verdict']} and "
             f"{t1['hypothesis']['verdict']}. On digits hard targets are "
             f"{'over' if d1['hard_overconfidence'] > 0 else 'under'}-confident by "
             f"{abs(d1['hard_overconfidence']):.4f} and label smoothing leaves the model "
             f"{'over' if d1['ls_overconfidence'] > 0 else 'under'}-confident by "
             f"{abs(d1['ls_overconfidence']):.4f} (confidence minus accuracy): where hard targets "
             "are calibrated already, smoothing cannot lower ECE much.",
             f"2. *Similar* means the interval of the difference lies below "
             f"{c['similar_ece_margin']} (scaling at most that much worse than label smoothing).",
             "3. Test BLEU (sacrebleu) of each model at the temperature of its best BLEU in the "
             f"sweep on valid (valid BLEU {c3['best']['hard']['sweep_bleu']:.2f} and "
             f"{c3['best']['ls']['sweep_bleu']:.2f}); NLL per token, given the reference "
             "prefix, of label smoothing at T=1 against hard targets at their NLL-optimal T.",
             f"4. The hard teacher distils at T={t4['hard_teacher_T']:.3f}, where its γ on the "
             f"training split is {t4['hard_teacher_gamma']:.4f}, equal to the LS teacher's γ at "
             "T=1; students learn from the teachers alone (β=1).",
             f"5. Tightness is within-class over between-class spread of the decoder states at "
             f"{', '.join(t5['tokens'])} (translation) and of the penultimate activations of "
             f"{', '.join(f5['classes'])} (Fashion-MNIST); mutual information per epoch: hard "
             f"{', '.join(f'{x:.4f}' for x in f5['mutual_information']['hard']['curve'])}; LS "
             f"{', '.join(f'{x:.4f}' for x in f5['mutual_information']['ls']['curve'])}. The mutual "
             "information has no interval.", "",
             "## Temperature sweep (Fig. 4, valid)", "",
             "| model | T | BLEU | NLL | ECE (reference) | ECE (hypothesis) |", "|---|---|---|---|---|---|"]
    for name, points in c3["sweep"].items():
        for point in points:
            lines.append(f"| {name} | {point['temperature']:g} | {point['bleu']:.2f} | "
                         f"{point['nll']:.4f} | {point['ece']:.4f} | {point['hypothesis_ece']:.4f} |")
    lines += ["", "## Figures", "",
              "- [translation reliability, hard](translation/generate/hard.png), "
              "[label smoothing](translation/generate/ls.png), "
              "[hard at T*](translation/generate/hard-fitted-T.png)",
              "- [temperature sweep](translation/sweep/sweep.png), "
              "[decoder states (Fig. 1)](translation/projection/fig1.png)",
              "- [Fashion-MNIST reliability](vision/fashion/reliability.png), "
              "[Fig. 1](vision/fashion/fig1.png), [Fig. 6](vision/fashion/fig6.png), "
              "[Fig. 5](vision/fig5/fig5.png)", "",
              "![Fig. 4](translation/sweep/sweep.png)", "", "![Fig. 1](vision/fashion/fig1.png)", "",
              "## Settings, data, versions, time", "",
              f"- Translation: Bible es→en, {data['translation']['train']} training pairs, "
              f"{data['translation']['valid']} valid, {data['translation']['test']} test; "
              f"vocabulary {s['vocab_size']}; `{' '.join(str(x) for x in s['model'])}`, "
              f"{s['max_epoch']} epochs; beam {s['beam']}; students "
              f"`{' '.join(str(x) for x in s['student'])}`, {s['student_epochs']} epochs, top-"
              f"{s['topk']} teacher cache.",
              f"- Vision: Fashion-MNIST MLP 784-512-512-10, Adam, {s['fashion_epochs']} epochs "
              f"without augmentation (α=0 and 0.05) and {s['mi_epochs']} epochs with random "
              f"shifts and the MI probe ({s['mi_examples']} images, α=0 and 0.1); "
              f"{data['fashion_val']} validation and {data['fashion_test']} test images; Fig. 5 "
              f"teachers {s['fig5_teacher_epochs']} epochs, students {s['fig5_student_epochs']}; "
              f"digits small CNN {s['digits_epochs']} epochs.",
              "- Versions: " + ", ".join(f"{k} {v}" for k, v in s["versions"].items()) +
              f"; Python {s['python']}; {s['cpu_count']} CPUs.", "",
              "| stage | seconds |", "|---|---|"]
    lines += [f"| {stage['stage']} | {stage['seconds']:.1f} |" for stage in c["stages"]]
    return lines


def main(argv=None) -> None:
    parser = cli.ArgumentParser(prog="demo_report", description=__doc__.split("\n\n")[0])
    parser.add_argument("work", help="the demo's directory (scripts/demo.py WORK)")
    args = parser.parse_args(argv)
    work = Path(args.work)
    with cli.exit_on_usage_error():
        cli.check_input_file("WORK", str(work / "settings.json"))
    claims = build_claims(work)
    for name, text in (("claims.json", json.dumps(claims, indent=1) + "\n"),
                       ("report.md", render(claims))):
        temporary = work / f"{name}.tmp"
        temporary.write_text(text)
        os.replace(temporary, work / name)
    print((work / "report.md").read_text())


if __name__ == "__main__":
    main()

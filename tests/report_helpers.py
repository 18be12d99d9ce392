"""The report of a job's runs read back for the tests: its title, notes, tables (shared by the job tests)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

#: the title each job kind's report carries
TITLES = {"joint_search": "Joint search report", "ablation": "Ablation report", "retrain": "Retrain report",
          "hparam_search": "Hyperparameter search report", "transfer": "Transfer report"}
_TEXT = {"seeds": str, "arm": str, "run_name": str, "retrain_run": str, "trial": str, "cell": str}


@dataclass
class JobReport:
    """A written report: its folder, Markdown, HTML, notes and tables (``tables/*.csv`` as frames)."""

    out: Path
    markdown: str
    html: str
    notes: list[str]
    tables: dict[str, pd.DataFrame]

    @property
    def title(self) -> str:
        return self.markdown.splitlines()[0].removeprefix("# ")

    def arms(self, metric: str) -> pd.DataFrame:
        """The per-arm rows of ``metric``, indexed by arm."""
        arms = self.tables["arms"]
        return arms[arms["metric"] == metric].set_index("arm")

    def trials(self) -> pd.DataFrame:
        return self.tables["trials"]


def job_report(out: Path, experiment: str, *, store: str | None = None, ray_results: Path | None = None,
               figures: bool = False, extra: tuple[str, ...] = ()) -> JobReport:
    """``python -m analysis.report`` (in this process) on a job's runs; the report read back."""
    from analysis.report import main

    source = ["--tracking-uri", store] if store else ["--ray-results", str(ray_results)]
    args = ["--experiment", experiment, *source, "--out", str(out), *extra]
    assert main(args + ([] if figures else ["--no-figures"])) == 0
    return read_report(out)


def read_report(out: Path) -> JobReport:
    """A report folder read back."""
    markdown = (out / "report.md").read_text()
    notes = markdown.split("## Notes\n", 1)[1].strip().splitlines() if "## Notes\n" in markdown else []
    tables = {p.stem: pd.read_csv(p, dtype={k: v for k, v in _TEXT.items()}) for p in (out / "tables").glob("*.csv")}
    return JobReport(out, markdown, (out / "report.html").read_text(), [n.removeprefix("- ") for n in notes], tables)


def check_title(report: JobReport, job: str, name: str) -> None:
    """The Markdown heading and the HTML title name the job kind and the experiment."""
    title = f"{TITLES[job]}: {name}"
    assert report.title == title, report.title
    assert f"<title>{title}</title>" in report.html


def check_intervals(report: JobReport) -> None:
    """Every interval of the per-arm table stays in its metric's range: perplexities, seconds and parameters
    above zero (log scale), F1 within [0, 100]; and each interval holds its centre."""
    arms = report.tables["arms"]
    for row in arms.to_dict(orient="records"):
        low, high = row["ci_low"], row["ci_high"]
        if math.isnan(low):
            assert row["n"] < 2 and math.isnan(high), row
            continue
        centre = row["geo_mean"] if row["interval"] == "log" else row["mean"]
        assert low <= centre <= high, row
        if re.search(r"ppl|seconds|params", row["metric"]):
            assert row["interval"] == "log" and low > 0, row
        if "f1" in row["metric"]:
            assert row["interval"] == "percent" and 0 <= low and high <= 100, row


def check_real_arms(report: JobReport) -> None:
    """No arm is made of missing factors (a run outside every arm shown as ``- steps=- ...``)."""
    for name in ("arms", "comparisons", "curves"):
        if name in report.tables and "arm" in report.tables[name]:
            assert not any(re.search(r"(^|[ =])-( |$)", str(a)) for a in report.tables[name]["arm"]), name


__all__ = ["TITLES", "JobReport", "check_intervals", "check_real_arms", "check_title", "job_report", "read_report"]

"""Run a TPP study from its plan file, resumably, and write its report.

Every run is a real ``python -m monai.bundle run`` of the bundle's configs (``tools/study/plan.py`` documents
the plan's keys); a finished run is never run again, so a study is run in chunks: give ``--max_hours`` and
rerun the same command until it says the study is complete. Each chunk rewrites ``results.json``,
``results.md`` and the figures (``curves_<regime>.png``, ``forest.png``) in the study's folder from every run
finished so far. Usage, from the repository root::

    python tools/run_study.py studies/busi_litemedsam.yaml --max_hours 2
    python tools/run_study.py studies/busi_litemedsam.yaml --dry_run      # the runs, without running them
    python tools/run_study.py studies/busi_litemedsam.yaml --report_only  # the tables from what finished

The runs live under ``runs/`` and are not committed. On a new clone, resume from the published record: its runs
count as finished (a TPP run whose target parameters a run still to come reads is run again)::

    python tools/run_study.py studies/busi_litemedsam.yaml --restore docs/study/busi_litemedsam/results.json --max_hours 2
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from tools.study.plan import PlanError, load_plan  # noqa: E402
from tools.study.plots import plot_study  # noqa: E402
from tools.study.report import summarise  # noqa: E402
from tools.study.runner import restore_records, run_study, study_workdir  # noqa: E402
from tpp_components.io import atomic_write_text  # noqa: E402


def main(plan: str, workdir: str | None = None, max_hours: float | None = None, dry_run: bool = False,
         report_only: bool = False, workers: int = 1, publish: str | None = None, restore: str | None = None) -> int:
    """Run what is left of the study in ``plan`` (at most ``max_hours`` of new runs), then write its report.

    Args:
        plan: the study's YAML plan file.
        workdir: the study's folder (default: the plan's ``workdir``, else ``runs/studies/<study>``).
        max_hours: start no new run after this many hours; rerun to resume.
        dry_run: list the runs left and stop.
        report_only: write the report from the finished runs without running anything.
        workers: runs at once, sharing the plan's ``threads`` (for larger machines: on 2 cores one run is faster).
        publish: a folder (e.g. ``docs/study/<study>``) to copy the report, the figures, the plan and the
            machine's library versions into: what is committed, while the runs stay under ``runs/``.
        restore: a ``results.json`` (a published study's) whose runs count as finished here before anything runs.

    Returns:
        the number of runs left (0: the study is complete).
    """
    study = load_plan(plan)
    work = study_workdir(study, workdir)
    if restore:
        try:
            published = json.loads(Path(restore).read_text())["runs"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise PlanError(f"--restore {restore}: expected a study's results.json with a 'runs' list ({err})") from err
        print(f"restored {restore_records(study, published, work)} finished runs from {restore}", flush=True)
    records, left = run_study(study, work, max_hours=None if report_only else max_hours, dry_run=dry_run or report_only,
                                workers=workers)
    if dry_run and not report_only:
        return left
    summary, text = summarise(study, records)
    status = "complete" if left == 0 else f"{left} runs left (rerun to resume)"
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_text(work / "results.json", json.dumps({"status": status, "summary": summary, "runs": records}, indent=4))
    atomic_write_text(work / "results.md", text + f"\n\nStatus: {status}.\n")
    plot_study(records, summary, [r["name"] for r in study.regimes], work)
    print(text + f"\n\nStatus: {status}. Report: {work / 'results.md'}")
    if publish:
        _publish(study.file, work, Path(publish))
    return left


def _environment() -> dict:
    """The library versions and the machine the runs were made on (recorded when a study is published)."""
    import monai
    import torch

    info = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in info.read_text().splitlines()
             if line.startswith("model name")] if info.is_file() else []
    return {"python": platform.python_version(), "torch": torch.__version__, "monai": monai.__version__,
            "cpu": names[0] if names else platform.processor(), "cores": os.cpu_count(), "platform": platform.platform()}


def _publish(plan: Path, work: Path, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ["results.md", "results.json", *sorted(p.name for p in work.glob("*.png"))]:
        shutil.copyfile(work / name, folder / name)
    shutil.copyfile(plan, folder / plan.name)
    atomic_write_text(folder / "environment.json", json.dumps(_environment(), indent=4))
    print(f"published to {folder}")


if __name__ == "__main__":
    try:
        fire.Fire(main, name="run_study", serialize=lambda left: None)  # the count is for callers, not the terminal
    except PlanError as err:  # a plan that cannot run: one line naming the file and key, no traceback
        sys.exit(f"ERROR: {err}")

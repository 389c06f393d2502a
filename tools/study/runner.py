"""Run a study plan: each run is the bundle's own ``python -m monai.bundle run``; finished runs are never redone.

A run is finished when its folder holds ``result.json`` (written atomically after the stage, and for
fine-tuning after the evaluation, succeeded), so an interrupted study (a killed process, a chunk's time
budget) resumes where it stopped: rerun the same command. The runs stay under ``runs/`` (not committed); a new
clone resumes from the published record instead (:func:`restore_records`): its runs count as finished, and a TPP
run or stage 0 whose files a run still to come reads is run again.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from tools.bundle_command import bundle_command
from tools.study.curves import scalar_curve
from tools.study.metrics import VALIDATION_TAG, read_test_metrics
from tools.study.plan import STAGE_OUTPUTS, PlanError, Run, StudyPlan
from tpp_components.io import atomic_write_text
from tpp_components.runtime import cpu_environment

__all__ = ["bundle_run", "restore_records", "run_study", "run_timed", "study_workdir"]

ROOT = Path(__file__).resolve().parents[2]


def bundle_run(bundle: Path, configs: list[str], overrides: dict, log: Path, threads: int,
               cpu: dict[str, float] | None = None, key: str = "") -> float:
    """Run ``python -m monai.bundle run`` on ``bundle``'s ``configs`` with ``overrides``; return its wall time (s).

    Output goes to ``log``; a failure raises with the log's tail and its path. With ``cpu``, the stage's CPU time
    (user + system seconds of the process and the children it waited for) is stored under ``cpu[key]``: unlike
    the wall time, it does not count the time the run was paused or waiting for the cores another process held.
    """
    cmd = bundle_command(bundle, configs, overrides)
    env = cpu_environment(threads, dict(os.environ, PYTHONWARNINGS="ignore"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        code, elapsed, cpu_s = run_timed(cmd, out, env, ROOT)
    if cpu is not None:
        cpu[key] = cpu_s
    if code:
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise RuntimeError(f"stage failed ({' '.join(configs)}), see {log}:\n{tail}")
    return elapsed


def run_timed(cmd: list[str], out: Any, env: dict[str, str], cwd: Path) -> tuple[int, float, float]:
    """Run ``cmd`` (stdout and stderr to ``out``) to its end; return its exit code, wall seconds and CPU seconds.

    The CPU time comes from ``os.wait4``, the rusage of this one child (``subprocess`` does not expose it, and
    ``RUSAGE_CHILDREN`` would mix in the runs of other workers).
    """
    start = time.perf_counter()
    process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    try:
        _, status, usage = os.wait4(process.pid, 0)
    except BaseException:
        process.kill()
        process.wait()
        raise
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    return process.returncode, time.perf_counter() - start, usage.ru_utime + usage.ru_stime


def study_workdir(plan: StudyPlan, workdir: str | os.PathLike | None = None) -> Path:
    """The study's folder: ``workdir`` if given, else the plan's ``workdir``, else ``runs/studies/<study>``."""
    return Path(workdir or plan.workdir or ROOT / "runs" / "studies" / plan.study).resolve()


def _execute(plan: StudyPlan, run: Run, work: Path, threads: int) -> dict:
    """Run one TPP stage, or fine-tuning then evaluation, with ``threads`` torch threads; return its record."""
    folder = work / run.path
    stage = {**run.overrides, "ckpt_dir": str(folder), "output_dir": str(folder / "logs")}
    record: dict[str, Any] = {"kind": run.kind, "path": run.path, "seed": run.seed, "arm": run.arm, "method": run.method,
                              "regime": run.regime, "overrides": run.overrides}
    cpu: dict[str, float] = {}
    record["cpu_seconds"] = cpu
    if run.kind in ("stage0", "tpp"):
        record["seconds"] = {run.kind: bundle_run(plan.bundle, ["train.json", *run.configs], stage,
                                                  folder / f"{run.kind}.log", threads, cpu, run.kind)}
        record["pretext_curve"] = scalar_curve(folder / "logs", "val_pretext_loss")
        return record
    if run.needs is not None:
        stage.update({key: str(work / run.needs / name) for key, name in STAGE_OUTPUTS["tpp"].items()})
    seconds = {"train": bundle_run(plan.bundle, ["train.json", *run.configs], stage, folder / "train.log", threads,
                                   cpu, "train")}
    # the merged model.pt holds the backbone: evaluation reads only it
    evaluate = {k: v for k, v in run.overrides.items() if k not in ("backbone_weights", "tpp_target_parameters")}
    evaluate.update(ckpt_dir=str(folder), output_dir=str(folder / "eval"))
    seconds["evaluate"] = bundle_run(plan.bundle, ["train.json", *run.configs, "evaluate.json"], evaluate,
                                     folder / "evaluate.log", threads, cpu, "evaluate")
    task, metrics = read_test_metrics(folder / "eval")
    record.update(task=task, test=metrics, seconds=seconds, val_curve=scalar_curve(folder / "logs", VALIDATION_TAG[task]))
    return record


def _dependencies(run: Run, runs: list[Run]) -> set[str]:
    """The runs that must finish before ``run`` starts: its TPP run, and the study's stage 0."""
    deps = {run.needs} if run.needs else set()
    if run.kind != "stage0" and any(r.kind == "stage0" for r in runs):
        deps.add("stage0")
    return deps


def _outputs(run: Run, work: Path) -> list[Path]:
    """The files of ``run`` that later runs read (:data:`STAGE_OUTPUTS`)."""
    return [work / run.path / name for name in STAGE_OUTPUTS.get(run.kind, {}).values()]


def _to_redo(runs: list[Run], todo: list[Run], work: Path) -> list[Run]:
    """Finished runs whose files a run in ``todo`` reads but which are gone (a record restored from a published
    study keeps the numbers, not the checkpoints): they run again, before the runs that read them."""
    by_path = {r.path: r for r in runs}
    needed = set().union(*(_dependencies(r, runs) for r in todo)) if todo else set()
    todo_paths = {r.path for r in todo}
    return [by_path[p] for p in sorted(needed - todo_paths)
            if not all(f.is_file() for f in _outputs(by_path[p], work))]


# keys whose values are paths on the machine that made a record: compared by file name only
_PATH_KEYS = {"datalist", *(key for files in STAGE_OUTPUTS.values() for key in files)}


def restore_records(plan: StudyPlan, records: list[dict], workdir: str | os.PathLike | None = None) -> int:
    """Mark the runs in ``records`` (a ``results.json``'s ``runs``: a published study) finished in the study's folder.

    A run that already has its ``result.json`` is kept. A record must match its run's kind and overrides (paths
    compared by file name): a plan changed since it was published raises :class:`PlanError` naming the run and key,
    before anything is written. A record of no run of ``plan`` is ignored. Returns how many runs were restored.
    """
    work = study_workdir(plan, workdir)
    runs = {r.path: r for r in plan.runs(work)}
    pending = [(runs[rec["path"]], rec) for rec in records
               if rec.get("path") in runs and not _result_file(work, runs[rec["path"]]).is_file()]
    for run, record in pending:
        theirs, ours = {"kind": record.get("kind"), **record.get("overrides", {})}, {"kind": run.kind, **run.overrides}
        for key in sorted(set(theirs) | set(ours)):
            a, b = theirs.get(key), ours.get(key)
            if key in _PATH_KEYS and isinstance(a, str) and isinstance(b, str):
                a, b = Path(a).name, Path(b).name
            if a != b:
                raise PlanError(f"restoring '{run.path}': its record was made with {key}={a!r}, the plan "
                                 f"'{plan.file}' now gives {b!r}; restore from a record of this plan")
    for run, record in pending:
        atomic_write_text(_result_file(work, run), json.dumps(record, indent=4))
    return len(pending)


def run_study(plan: StudyPlan, workdir: str | os.PathLike | None = None, max_hours: float | None = None,
              dry_run: bool = False, workers: int = 1) -> tuple[list[dict], int]:
    """Run every unfinished run of ``plan`` in order; stop starting new ones after ``max_hours``.

    With ``workers`` above 1, that many runs go at once, each with ``plan.threads // workers`` torch threads
    (at least one), and a run starts only once the runs it reads from (its TPP run, stage 0) have finished.
    It is for machines with cores to spare: on 2 cores (AVX-512 bf16), two one-thread BUSI LiteMedSAM LoRA
    epochs ran at 4.9 + 4.5 img/s against 10.1 img/s for one two-thread run, so there one worker is faster.
    A failed run stops new starts; the runs already going finish, then it raises.

    Returns:
        ``(results, remaining)``: the records of every finished run (earlier and new), and how many runs
        are left (0 when the study is complete).
    """
    work = study_workdir(plan, workdir)
    runs = plan.runs(work)
    done = {r.path for r in runs if _result_file(work, r).is_file()}
    todo = [r for r in runs if r.path not in done]
    redo = {r.path for r in _to_redo(runs, todo, work)}
    if redo:
        print(f"run again, their files are gone and later runs read them: {', '.join(sorted(redo))}", flush=True)
        done -= redo
        todo = [r for r in runs if r.path not in done]
    print(f"study '{plan.study}' in {work}: {len(runs)} runs, {len(done)} finished, {len(todo)} to run", flush=True)
    if dry_run:
        for r in todo:
            print(f"  {r.kind:8s} {r.path}", flush=True)
        return _records(runs, work), len(todo)
    workers = max(1, int(workers))
    threads = max(1, plan.threads // workers)
    start, spent = time.monotonic(), {"stage0": [], "tpp": [], "finetune": []}
    waiting, going, finished, failure = list(todo), {}, 0, None
    with ThreadPoolExecutor(workers) as pool:
        while waiting or going:
            over = max_hours is not None and time.monotonic() - start > 3600 * max_hours
            while failure is None and not over and len(going) < workers:
                for r in [r for r in waiting if r.path not in redo and _result_file(work, r).is_file()]:
                    waiting.remove(r)  # finished meanwhile by another runner on this folder (a one-cell plan)
                    done.add(r.path)
                ready = next((r for r in waiting if _dependencies(r, runs) <= done), None)
                if ready is None:
                    break
                waiting.remove(ready)
                going[pool.submit(_execute, plan, ready, work, threads)] = ready
            if not going:
                break
            finished_now, _ = wait(list(going), return_when=FIRST_COMPLETED)
            for future in finished_now:
                run = going.pop(future)
                error = _finish(future, run, work, spent)
                if error is not None:
                    failure = failure or error
                    continue
                finished += 1
                done.add(run.path)
                _progress(run, future, finished, todo, waiting, going, spent, workers)
    if failure is not None:
        raise failure
    if waiting:
        print(f"time budget of {max_hours} h spent: {len(waiting)} runs left; rerun the same command to go on", flush=True)
    return _records(runs, work), len(waiting)


def _result_file(work: Path, run: Run) -> Path:
    """The record whose presence marks ``run`` finished."""
    return work / run.path / "result.json"


def _finish(future: Future, run: Run, work: Path, spent: dict[str, list[float]]) -> BaseException | None:
    """Mark a run done (its ``result.json``) or return the error it raised."""
    error = future.exception()
    if error is not None:
        return error
    record = future.result()
    atomic_write_text(_result_file(work, run), json.dumps(record, indent=4))
    spent[run.kind].append(sum(record["seconds"].values()))
    return None


def _progress(run: Run, future: Future, finished: int, todo: list[Run], waiting: list[Run], going: dict,
              spent: dict[str, list[float]], workers: int) -> None:
    record = future.result()
    took = sum(record["seconds"].values())
    rest = [*waiting, *going.values()]
    left = sum((sum(spent[r.kind]) / len(spent[r.kind]) if spent[r.kind] else took) for r in rest) / workers
    score = " ".join(f"{k} {v:.3f}" for k, v in record.get("test", {}).items())
    print(f"[{finished}/{len(todo)}] {run.path}: {took:.0f} s {score}  (about {left / 3600:.1f} h left)", flush=True)


def _records(runs: list[Run], work: Path) -> list[dict]:
    return [json.loads(_result_file(work, r).read_text()) for r in runs if _result_file(work, r).is_file()]

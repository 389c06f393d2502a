"""A study plan: one YAML file naming the bundle, the data, the PEFT methods, the TPP variants, the arms, the
regimes and the seeds; and the runs it implies, in the order they run.

A plan (every key but ``study``, ``bundle``, ``datalist``, ``methods`` and ``arms`` is optional)::

    study: busi_litemedsam                    # the name; results go to runs/studies/<study> unless workdir says
    bundle: bundles/breast_us_classification  # relative to the repository root
    switches: [litemedsam.json]               # merged after train.json in every stage
    stage0: {num_epochs: 50}                  # bundles whose backbone is their own: stage 0 (pretrain.json) once,
                                              # on the training images; every run then reads its backbone.pt
    datalist: ${TPP_DATALISTS}/busi.json      # environment variables expand; relative paths from the plan's folder
    seeds: [0, 1, 2]                          # the paired seeds of every arm, unless an arm names fewer
    overrides: {head_norm: true}              # every stage of every run
    methods:                                  # name -> the bundle's ``peft`` value
      lora: {method: lora, r: 8, alpha: 16, target_modules: attention_mlp}
    pretexts:                                 # name -> overrides of the TPP stage (tpp.json): the TPP variants
      pixels: {tpp_epochs: 5}
      features: {tpp_epochs: 5, "pretext#target": features}
    arms:                                     # name -> how fine-tuning starts; ``pretext`` names a TPP variant
      standard: {}
      tpp: {pretext: pixels}
      tpp_a_only: {pretext: pixels, overrides: {tpp_update_scale: 0.0}, seeds: [0, 1, 2]}  # a secondary arm: 3 seeds
      tpp_fresh: {pretext: fresh, methods: [lora]}                                       # only for some methods
    baseline_arm: standard                    # each other arm is compared with it, paired by seed
    reference_arms:                           # name -> fine-tuning overrides, no PEFT method of the plan
      linear_probe: {peft: null, freeze_backbone: true, learning_rate: 0.005}
      full_finetune: {peft: null, freeze_backbone: false, learning_rate: 0.0003}
    reference_seeds: [0, 1, 2]                # the reference arms' seeds (default: every seed), or per arm:
                                              # {full_finetune: [0]} (an arm not named runs on every seed)
    regimes:                                  # fine-tuning conditions: a share of the training labels, a budget
      - {name: all_labels, label_fraction: 1.0, overrides: {num_epochs: 8}}
      - {name: labels_10, label_fraction: 0.1, overrides: {num_epochs: 8}}

TPP uses every training image of the datalist (labels unused) and does not depend on the regime, so one TPP
run per (method, pretext, seed) serves every regime and every arm that names that pretext. A regime's label
fraction keeps a stratified share of the training split per seed (the validation and test splits are
untouched), the same for every arm of that seed, so the arms stay paired.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["PlanError", "Run", "StudyPlan", "label_subset", "load_plan"]

ROOT = Path(__file__).resolve().parents[2]
_KEYS = {"study", "bundle", "switches", "stage0", "datalist", "seeds", "overrides", "methods", "pretexts", "arms",
         "baseline_arm", "reference_arms", "reference_seeds", "regimes", "workdir", "threads"}
_ARM_KEYS = {"pretext", "overrides", "seeds", "methods"}
_REGIME_KEYS = {"name", "label_fraction", "overrides"}


#: the files a stage writes into its run's folder that later runs read, by the override that hands each to them
#: (stage 0's backbone and decoder to every run, a TPP run's target parameters to the arms that start from it)
STAGE_OUTPUTS: dict[str, dict[str, str]] = {
    "stage0": {"backbone_weights": "backbone.pt", "pretext_decoder": "pretext_decoder.pt"},
    "tpp": {"tpp_target_parameters": "tpp_target_parameters.safetensors"},
}


class PlanError(ValueError):
    """A study plan that cannot run: names the file, the key and what was expected."""


@dataclass
class Run:
    """One run of a study: a TPP stage, or fine-tuning followed by evaluation on the test split.

    Attributes:
        kind: ``"stage0"``, ``"tpp"`` or ``"finetune"``.
        path: its folder, relative to the study's workdir (unique; ``result.json`` there marks it done).
        configs: the bundle's config files after ``train.json`` (switches, then the stage's file).
        overrides: the stage's config overrides (``--key value`` of ``monai.bundle run``).
        seed / regime / method / arm: what it is (``method`` is None for a reference arm; ``regime`` None for TPP).
        needs: the path of the TPP run whose target parameters it starts from, if any.
    """

    kind: str
    path: str
    configs: list[str]
    overrides: dict[str, Any]
    seed: int
    arm: str
    method: str | None = None
    regime: str | None = None
    needs: str | None = None


@dataclass
class StudyPlan:
    """A parsed plan (see the module docstring); :meth:`runs` lists what it runs."""

    study: str
    file: Path
    bundle: Path
    datalist: Path
    methods: dict[str, dict]
    arms: dict[str, dict]
    switches: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    overrides: dict[str, Any] = field(default_factory=dict)
    pretexts: dict[str, dict] = field(default_factory=dict)
    baseline_arm: str = "standard"
    reference_arms: dict[str, dict] = field(default_factory=dict)
    reference_seeds: list[int] | dict[str, list[int]] | None = None
    regimes: list[dict] = field(default_factory=lambda: [{"name": "all_labels", "label_fraction": 1.0, "overrides": {}}])
    stage0: dict[str, Any] | None = None
    workdir: Path | None = None
    threads: int = 2

    def runs(self, workdir: Path) -> list[Run]:
        """Every run, seed by seed (so an interrupted study has whole seeds first), TPP before the arms it serves.

        ``workdir`` holds the label-subset datalists this writes (one per regime and seed, below 100 %).
        """
        base = [*self.switches]
        runs: list[Run] = []
        common = dict(self.overrides)
        if self.stage0 is not None:  # one stage 0 for the whole study; its backbone and decoder serve every run
            runs.append(Run("stage0", "stage0", [*base, "pretrain.json"],
                            {**self.overrides, **self.stage0, "datalist": str(self.datalist)}, seed=0, arm="stage0"))
            common.update({key: str(workdir / "stage0" / name) for key, name in STAGE_OUTPUTS["stage0"].items()})
        tpp_done: set[str] = set()
        for seed in self.seeds:
            for regime in self.regimes:
                datalist = self._regime_datalist(regime, seed, workdir)
                tune = {**common, **regime.get("overrides", {}), "datalist": datalist, "seed": seed}
                for ref, values in self.reference_arms.items():
                    if seed not in self.reference_seeds_of(ref):
                        continue
                    runs.append(Run("finetune", f"{regime['name']}/seed{seed}/{ref}", base,
                                    {**tune, "init": "standard", **values}, seed, ref, regime=regime["name"]))
                for method, peft in self.methods.items():
                    for arm, spec in self.arms.items():
                        if seed not in spec.get("seeds", self.seeds) or method not in spec.get("methods", self.methods):
                            continue
                        pretext = spec.get("pretext")
                        needs = None
                        if pretext is not None:
                            needs = f"tpp/{method}/{pretext}/seed{seed}"
                            if needs not in tpp_done:
                                tpp_done.add(needs)
                                runs.append(Run("tpp", needs, [*base, "tpp.json"], {
                                    **common, **self.pretexts[pretext], "datalist": str(self.datalist),
                                    "peft": peft, "seed": seed}, seed, pretext, method=method))
                        values = {**tune, "peft": peft, "init": "standard" if needs is None else "tpp",
                                  **spec.get("overrides", {})}
                        runs.append(Run("finetune", f"{regime['name']}/seed{seed}/{method}/{arm}", base, values, seed, arm,
                                        method=method, regime=regime["name"], needs=needs))
        return runs

    def reference_seeds_of(self, arm: str) -> list[int]:
        """The seeds reference arm ``arm`` runs on."""
        if isinstance(self.reference_seeds, dict):
            return self.reference_seeds.get(arm, self.seeds)
        return self.reference_seeds or self.seeds

    def _regime_datalist(self, regime: dict, seed: int, workdir: Path) -> str:
        fraction = float(regime.get("label_fraction", 1.0))
        if fraction >= 1.0:
            return str(self.datalist)
        path = workdir / "datalists" / f"{regime['name']}_seed{seed}.json"
        if not path.is_file():  # written once: a resumed study keeps the subsets its finished runs used
            data = json.loads(self.datalist.read_text())
            data["training"] = label_subset(data["training"], fraction, seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=4))
            tmp.replace(path)
        return str(path)


def label_subset(items: list[dict], fraction: float, seed: int) -> list[dict]:
    """A share ``fraction`` of ``items``, stratified by an integer ``label`` where there is one (at least one item
    per class), drawn with ``seed``; the items keep their datalist order."""
    rng = random.Random(seed)
    groups: dict[Any, list[int]] = {}
    for i, item in enumerate(items):
        label = item.get("label")
        groups.setdefault(label if isinstance(label, int) else None, []).append(i)
    keep: list[int] = []
    for indices in groups.values():
        keep += rng.sample(indices, max(1, round(fraction * len(indices))))
    return [items[i] for i in sorted(keep)]


def _seed_subset(seeds: Any, every: list, where: str) -> list[int]:
    """``seeds`` checked to be a list of the plan's seeds (an arm runs on some of the paired seeds, never others)."""
    if not isinstance(seeds, list) or not set(seeds) <= set(every):
        raise PlanError(f"{where} {seeds!r}; expected a list of the plan's seeds {every}.")
    return [int(s) for s in seeds]


def _reference_seeds(raw: dict, where: str) -> list[int] | dict[str, list[int]] | None:
    """The plan's ``reference_seeds``: a list of its seeds for every reference arm, or ``{arm: seeds}``."""
    value, every = raw.get("reference_seeds"), raw.get("seeds", [0, 1, 2])
    if value is None:
        return None
    if not isinstance(value, dict):
        return _seed_subset(value, every, f"{where}: 'reference_seeds'")
    unknown = sorted(set(value) - set(raw.get("reference_arms") or {}))
    if unknown:
        raise PlanError(f"{where}: 'reference_seeds' names {unknown}, not among 'reference_arms' "
                        f"{sorted(raw.get('reference_arms') or {})}.")
    return {arm: _seed_subset(seeds, every, f"{where}: 'reference_seeds' of '{arm}'") for arm, seeds in value.items()}


def _expand(value: str, base: Path) -> Path:
    path = Path(os.path.expandvars(os.path.expanduser(value)))
    return path if path.is_absolute() else (base / path).resolve()


def load_plan(path: str | os.PathLike) -> StudyPlan:
    """Read and check a plan file; every error names the file and the key."""
    file = Path(path).resolve()
    if not file.is_file():
        raise PlanError(f"study plan '{file}' not found.")
    try:
        raw = yaml.safe_load(file.read_text())
    except yaml.YAMLError as err:
        raise PlanError(f"study plan '{file}' is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise PlanError(f"study plan '{file}': expected a mapping of keys, got {type(raw).__name__}.")
    where = f"study plan '{file}'"
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise PlanError(f"{where}: unknown keys {unknown}; expected some of {sorted(_KEYS)}.")
    missing = sorted({"study", "bundle", "datalist", "methods", "arms"} - set(raw))
    if missing:
        raise PlanError(f"{where}: missing keys {missing}.")
    bundle = _expand(str(raw["bundle"]), ROOT)
    if not (bundle / "configs" / "train.json").is_file():
        raise PlanError(f"{where}: bundle '{bundle}' has no configs/train.json.")
    if raw.get("stage0") is not None and not (bundle / "configs" / "pretrain.json").is_file():
        raise PlanError(f"{where}: 'stage0' is set but bundle '{bundle}' has no configs/pretrain.json.")
    for switch in raw.get("switches") or []:
        if not (bundle / "configs" / switch).is_file():
            raise PlanError(f"{where}: switch '{switch}' is not a file of {bundle / 'configs'}.")
    datalist = _expand(str(raw["datalist"]), file.parent)
    if not datalist.is_file():
        raise PlanError(f"{where}: datalist '{datalist}' not found (key 'datalist': {raw['datalist']!r}).")
    pretexts = raw.get("pretexts") or {}
    arms = raw["arms"]
    for name, spec in arms.items():
        spec = spec or {}
        bad = sorted(set(spec) - _ARM_KEYS)
        if bad:
            raise PlanError(f"{where}: arm '{name}' has unknown keys {bad}; expected some of {sorted(_ARM_KEYS)}.")
        if spec.get("pretext") is not None and spec["pretext"] not in pretexts:
            raise PlanError(f"{where}: arm '{name}' names pretext '{spec['pretext']}', "
                            f"not one of 'pretexts' {sorted(pretexts)}.")
        if "seeds" in spec:
            spec["seeds"] = _seed_subset(spec["seeds"], raw.get("seeds", [0, 1, 2]), f"{where}: arm '{name}' 'seeds'")
        if "methods" in spec and (not isinstance(spec["methods"], list) or not set(spec["methods"]) <= set(raw["methods"])):
            raise PlanError(f"{where}: arm '{name}' 'methods' {spec['methods']!r}; expected a list of the plan's "
                            f"methods {sorted(raw['methods'])}.")
        arms[name] = spec
    baseline = raw.get("baseline_arm", "standard")
    if baseline not in arms:
        raise PlanError(f"{where}: baseline_arm '{baseline}' is not one of 'arms' {sorted(arms)}.")
    regimes = raw.get("regimes") or [{"name": "all_labels", "label_fraction": 1.0}]
    for regime in regimes:
        bad = sorted(set(regime) - _REGIME_KEYS)
        if bad or "name" not in regime:
            raise PlanError(f"{where}: regime {regime} needs a 'name' and only keys {sorted(_REGIME_KEYS)}.")
        fraction = regime.get("label_fraction", 1.0)
        if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
            raise PlanError(f"{where}: regime '{regime['name']}' label_fraction {fraction!r}; expected a number in (0, 1].")
    names = [r["name"] for r in regimes]
    if len(set(names)) != len(names):
        raise PlanError(f"{where}: regime names repeat: {names}.")
    return StudyPlan(
        study=str(raw["study"]), file=file, bundle=bundle, datalist=datalist, methods=dict(raw["methods"]), arms=arms,
        switches=list(raw.get("switches") or []), stage0=None if raw.get("stage0") is None else dict(raw["stage0"]),
        seeds=[int(s) for s in raw.get("seeds", [0, 1, 2])],
        reference_seeds=_reference_seeds(raw, where),
        overrides=dict(raw.get("overrides") or {}), pretexts={k: dict(v or {}) for k, v in pretexts.items()},
        baseline_arm=baseline, reference_arms={k: dict(v or {}) for k, v in (raw.get("reference_arms") or {}).items()},
        regimes=regimes, workdir=_expand(str(raw["workdir"]), ROOT) if raw.get("workdir") else None,
        threads=int(raw.get("threads", 2)),
    )

"""Imported at start-up by every Python process of the README harness (``tests/test_readme_commands.py`` puts
this folder first on their ``PYTHONPATH``); nothing else loads it.

With ``TPP_README_MAX_EPOCHS=N`` in the environment, a MONAI trainer (``monai.engines.Trainer``: fine-tuning,
stage 0, TPP) runs at most N of its epochs and says so on stderr; evaluators, inference and everything else
run unchanged, and every handler of the stage (validation, checkpoints, the best model, target parameters,
curves) still runs in each epoch it does. The hook waits until ``monai.engines.workflow`` is imported, so a
process that never imports it pays nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys

_MAX_EPOCHS = os.environ.get("TPP_README_MAX_EPOCHS")


def _cap(workflow: type, cap: int) -> None:
    run = workflow.run

    def capped_run(self, *args, **kwargs):
        trainer = getattr(sys.modules.get("monai.engines.trainer"), "Trainer", ())
        if isinstance(self, trainer) and (self.state.max_epochs or 0) > cap:
            name, epochs = type(self).__name__, self.state.max_epochs
            print(f"TPP_README_MAX_EPOCHS={cap}: {name} runs {cap} of its {epochs} epochs", file=sys.stderr, flush=True)
            self.state.max_epochs = cap
        return run(self, *args, **kwargs)

    workflow.run = capped_run


class _CapOnImport(importlib.abc.MetaPathFinder):
    """Patches ``Workflow.run`` right after ``monai.engines.workflow`` is executed."""

    def find_spec(self, name, path, target=None):
        if name != "monai.engines.workflow":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_cap(module):
            exec_module(module)
            _cap(module.Workflow, int(_MAX_EPOCHS))

        spec.loader.exec_module = exec_and_cap
        return spec


if _MAX_EPOCHS:
    sys.meta_path.insert(0, _CapOnImport())

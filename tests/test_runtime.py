"""The CPU training environment (``tpp_components.runtime``): glibc keeps large freed tensors for reuse."""

from __future__ import annotations

import os
import subprocess
import sys

from tpp_components.runtime import GLIBC_TUNABLES, cpu_environment

#: page faults of 5 "steps" that each allocate, fill and free six 40 MB activations, after one warm-up step
_CHILD = """
import resource, torch
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def step():
    activations = [torch.ones(10 * 1024 * 1024) for _ in range(6)]
step(); before = faults()
for _ in range(5):
    step()
print(faults() - before)
"""


def _refaults(env: dict) -> int:
    return int(subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True).stdout)


def test_cpu_environment_sets_threads_and_keeps_a_users_tunables():
    env = cpu_environment(3, {"PATH": "/bin"})
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": GLIBC_TUNABLES, "OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3"}
    assert cpu_environment(None, {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2"


def test_tunables_reuse_freed_activations():
    """With glibc's defaults every freed 40 MB tensor is unmapped, so each step faults in all its pages again
    (5 x 6 x 10,240 = 307,200); with the tunables most of them stay in the heap for reuse (measured 51k-72k)."""
    plain = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    default, tuned = _refaults(plain), _refaults(cpu_environment(base=plain))
    print(f"page faults of 5 steps: default {default}, tuned {tuned}")
    assert default > 250_000 and tuned < default / 3, (default, tuned)

"""The TPP study across the collection: a plan file (:mod:`.plan`) names the runs, :mod:`.runner` runs the bundles'
own configs and resumes, :mod:`.curves` and :mod:`.metrics` read what the runs wrote, :mod:`.stats` pairs the arms
by seed and :mod:`.report` writes the tables. Run it with ``python tools/run_study.py <plan.yaml>``."""

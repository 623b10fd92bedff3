"""Scripts run by hand or by ``make bench``; not part of the installed package.

- ``python -m benchmarks.run``: wall time of ``planner.estimate()`` per call -> ``docs/benchmarks.md``.
- ``python -m benchmarks.seed_table``: the seed lesson's section 6.1 table recomputed -> ``docs/seed-comparison.md``.
"""

"""`ckf sweep`: a grid of variants x seeds as parallel Ray Tune trials, one results table.

- :mod:`ckf_dist.sweep.grid`    the grid file, its trials, and which are already done;
- :mod:`ckf_dist.sweep.run`     running the trials on Ray Tune, the command;
- :mod:`ckf_dist.sweep.report`  results.json / results.md, the validation plot, TensorBoard runs.
"""

from ckf_dist.sweep.grid import Grid, GridError, Trial, load_grid


def cmd_sweep(args) -> int:
    from ckf_dist.sweep.run import cmd_sweep as run

    return run(args)


__all__ = ["Grid", "GridError", "Trial", "load_grid", "cmd_sweep"]

"""MTL against STL: single-task baselines and several methods/architectures over seeds.

- :mod:`~mtlkit.experiments.compare.runs`: the run matrix (a single-task model per main task
  and a model per method/architecture variant, for every seed): their configs, training or
  reusing each run folder, and ``compare.json``, ``compare.csv`` and ``compare.md``;
- :mod:`~mtlkit.experiments.compare.summary`: mean ± std over seeds, Δm against the
  single-task models, a verdict per variant, and the table as CSV, Markdown or on the console.
"""

from mtlkit.experiments.compare.runs import (
    STL_ARCHITECTURE,
    Variant,
    check_architectures,
    check_methods,
    check_same_data,
    main_metrics,
    run_compare,
    stl_config,
    train_or_reuse,
    variant_config,
)
from mtlkit.experiments.compare.summary import (
    print_summary,
    rows,
    summarise,
    to_csv,
    to_markdown,
    verdict,
)

__all__ = [
    "STL_ARCHITECTURE",
    "Variant",
    "check_architectures",
    "check_methods",
    "check_same_data",
    "main_metrics",
    "print_summary",
    "rows",
    "run_compare",
    "stl_config",
    "summarise",
    "to_csv",
    "to_markdown",
    "train_or_reuse",
    "variant_config",
    "verdict",
]

"""MTL against STL: single-task baselines and several methods/architectures over seeds.

- :mod:`~mtlkit.experiments.compare.runs`: the run matrix (a single-task model per main task
  and a model per method/architecture variant, for every seed) under one convergence
  protocol: their configs, training or reusing each run folder, and ``compare.json``,
  ``compare.csv`` and ``compare.md``;
- :mod:`~mtlkit.experiments.compare.summary`: statistics over seeds, Δm paired by seed with a
  95 % t-interval, decisions ("better", "worse", "no detectable difference"), verdicts, and
  the tables as CSV, Markdown or on the console;
- :mod:`~mtlkit.experiments.compare.efficiency`: parameters, training time, inference
  latency, throughput and peak memory of each side.

docs/protocol.md describes the protocol.
"""

from mtlkit.experiments.compare.efficiency import measure_inference
from mtlkit.experiments.compare.runs import (
    DEFAULT_PATIENCE,
    STL_ARCHITECTURE,
    Variant,
    check_architectures,
    check_methods,
    check_same_data,
    convergence_record,
    main_metrics,
    protocol_config,
    run_compare,
    stl_config,
    train_or_reuse,
    variant_config,
)
from mtlkit.experiments.compare.summary import (
    CONFIDENCE,
    DECISIONS,
    INTERVAL,
    decide,
    delta_rows,
    efficiency_rows,
    interval,
    print_summary,
    rows,
    summarise,
    to_csv,
    to_markdown,
    verdict,
)

__all__ = [
    "CONFIDENCE",
    "DECISIONS",
    "DEFAULT_PATIENCE",
    "INTERVAL",
    "STL_ARCHITECTURE",
    "Variant",
    "check_architectures",
    "check_methods",
    "check_same_data",
    "convergence_record",
    "decide",
    "delta_rows",
    "efficiency_rows",
    "interval",
    "main_metrics",
    "measure_inference",
    "print_summary",
    "protocol_config",
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

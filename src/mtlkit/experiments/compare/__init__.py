"""MTL against STL (see :mod:`mtlkit.experiments.compare.runs`)."""

from mtlkit.experiments.compare.runs import (
    STL_ARCHITECTURE,
    Variant,
    check_architectures,
    check_methods,
    check_same_data,
    print_summary,
    rows,
    run_compare,
    run_group,
    stl_config,
    summarise,
    to_csv,
    to_markdown,
    train_or_reuse,
    variant_config,
    verdict,
)

__all__ = [
    "STL_ARCHITECTURE",
    "Variant",
    "check_architectures",
    "check_methods",
    "check_same_data",
    "print_summary",
    "rows",
    "run_compare",
    "run_group",
    "stl_config",
    "summarise",
    "to_csv",
    "to_markdown",
    "train_or_reuse",
    "variant_config",
    "verdict",
]

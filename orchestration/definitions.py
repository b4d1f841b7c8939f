"""The one Dagster code location: merges the Definitions of each stage module.

Each stage module (ingest, dbt, segments, workflow, outbound) exposes `defs`; this file
only wires them together, in the data-flow order of DESIGN.md section 2.
"""

import dagster as dg

from orchestration import ingest

defs = dg.Definitions.merge(
    ingest.defs,
)

"""The segment language (docs/segments.md): who is in a list, declared in YAML.

- `segments.model`: the strict pydantic models of a definition file;
- `segments.validation`: loading files, every problem named by file and path;
- `segments.field_catalogue`: the fields a segment may use, from the marts' dbt docs;
- `segments.compiler` / `segments.evaluate`: polars expressions and the one evaluation
  function every caller uses;
- `segments.membership`: membership and its history in the warehouse;
- `segments.snapshots`: frozen lists of snapshot segments in the state store;
- `segments.library`: the shipped library plus SEGMENTS_PATH, preview, materialisation;
- `clinic_audiences.segment_commands`: the `audiences` segment commands.
"""

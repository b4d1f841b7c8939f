{#- Stop a run early, with one clear message, when the warehouse has not been ingested
    into: otherwise the first staging view fails with a bare "table does not exist". -#}
{% macro require_raw_tables() %}
    {%- if execute and flags.WHICH in ('run', 'build', 'test') -%}
        {%- set expected = [] -%}
        {%- for source in graph.sources.values() if source.source_name == 'raw' -%}
            {%- do expected.append(source.name) -%}
        {%- endfor -%}
        {%- set found = run_query(
            "select table_name from information_schema.tables where table_schema = 'raw'"
        ).columns[0].values() -%}
        {%- set missing = [] -%}
        {%- for name in expected | sort if name not in found -%}
            {%- do missing.append('raw.' ~ name) -%}
        {%- endfor -%}
        {%- if missing -%}
            {{ exceptions.raise_compiler_error(
                "The warehouse " ~ (target.path or target.database) ~ " lacks "
                ~ missing | join(', ')
                ~ ". Load an extract first (`audiences run --extracts DIR`), or point "
                ~ "DUCKDB_PATH at an ingested warehouse (an absolute path; relative paths are "
                ~ "taken from dbt_project/).") }}
        {%- endif -%}
    {%- endif -%}
{% endmacro %}

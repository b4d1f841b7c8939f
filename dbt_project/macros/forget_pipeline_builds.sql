{#- A dbt run or build started by hand may change the models the pipeline built: drop the
    pipeline's records of its builds (raw.__dbt_builds), so that its next build runs in
    full instead of reusing tables that are no longer what it built. The pipeline's own
    builds pass the var `pipeline_build` and keep them (it records and drops its own). -#}
{% macro forget_pipeline_builds() %}
    {%- if execute and flags.WHICH in ('run', 'build', 'seed', 'snapshot', 'clone', 'retry')
          and not var('pipeline_build', false) -%}
        {%- set found = run_query(
            "select count(*) from information_schema.tables "
            "where table_schema = 'raw' and table_name = '__dbt_builds'"
        ).columns[0].values()[0] -%}
        {%- if found -%}
            {%- do run_query("delete from raw.__dbt_builds") -%}
        {%- endif -%}
    {%- endif -%}
{% endmacro %}

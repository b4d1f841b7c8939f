{#- Models land in exactly the schema their folder names (staging, intermediate, marts),
    without dbt's default "<target schema>_" prefix: other components read
    `marts.patient_features` by that name. -#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema }}
    {%- else -%}
        {{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}

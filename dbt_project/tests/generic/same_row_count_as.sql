{#- A one-row-per-entity mart must keep every row of the entity it describes
    (e.g. patient_features has one row per patient, prospects included). -#}
{% test same_row_count_as(model, compare_model) %}
with counts as (
    select
        (select count(*) from {{ model }}) as model_rows,
        (select count(*) from {{ compare_model }}) as compare_rows
)
select *
from counts
where model_rows <> compare_rows
{% endtest %}

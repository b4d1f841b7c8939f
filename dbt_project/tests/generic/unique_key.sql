{#- `unique` for a key of millions of rows: the keys are grouped by their 64-bit hash
    first (integers group in about half the time text does), and only keys whose hash
    repeats are then compared as text. Exact: a repeated key repeats its hash, and two
    keys that only share a hash are told apart by their text. Returns each repeated key
    and how many rows hold it, as `unique` does. -#}
{% test unique_key(model, column_name) %}
with repeated_hashes as (
    select hash({{ column_name }}) as key_hash
    from {{ model }}
    where {{ column_name }} is not null
    group by 1
    having count(*) > 1
)
select {{ column_name }} as unique_field, count(*) as n_records
from {{ model }}
where {{ column_name }} is not null
    and hash({{ column_name }}) in (select key_hash from repeated_hashes)
group by {{ column_name }}
having count(*) > 1
{% endtest %}

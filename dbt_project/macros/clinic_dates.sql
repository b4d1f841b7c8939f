{#- The as-of date D and the clinic time zone (docs/warehouse.md). Every model reads
    them through these macros so that a bad value stops the run with one clear error. -#}

{% macro clinic_timezone() -%}
    {%- set tz = var('clinic_timezone', env_var('CLINIC_TIMEZONE', 'UTC')) or 'UTC' -%}
    {%- if tz not in modules.pytz.all_timezones -%}
        {{ exceptions.raise_compiler_error(
            "clinic_timezone '" ~ tz ~ "' is not an IANA time zone; pass a name such as "
            ~ "'Australia/Sydney' or 'UTC' (dbt --vars or CLINIC_TIMEZONE)") }}
    {%- endif -%}
    {{ return(tz) }}
{%- endmacro %}

{% macro as_of_iso() -%}
    {%- set raw = (var('as_of', '') or '') | string | trim -%}
    {%- if raw == '' -%}
        {%- set today = modules.datetime.datetime.now(modules.pytz.timezone(clinic_timezone())).date() -%}
        {{ return(today.isoformat()) }}
    {%- endif -%}
    {%- set parts = raw.split('-') -%}
    {%- set valid = modules.re.fullmatch('[0-9]{4}-[0-9]{2}-[0-9]{2}', raw) is not none
        and 1 <= parts[1] | int <= 12 and 1 <= parts[2] | int <= 31 -%}
    {%- if valid -%}
        {#- Day 31 of a 30-day month (or 29 Feb of a common year) rolls into the next month. -#}
        {%- set first = modules.datetime.date(parts[0] | int, parts[1] | int, 1) -%}
        {%- set valid = (first + modules.datetime.timedelta(days=(parts[2] | int) - 1)).month
            == parts[1] | int -%}
    {%- endif -%}
    {%- if not valid -%}
        {{ exceptions.raise_compiler_error(
            "as_of '" ~ raw ~ "' is not a date; write it as YYYY-MM-DD (dbt --vars or --as-of)") }}
    {%- endif -%}
    {{ return(raw) }}
{%- endmacro %}

{#- D as a SQL date literal. -#}
{% macro as_of_date() -%}
    date '{{ as_of_iso() }}'
{%- endmacro %}

{#- The calendar date of a UTC timestamp in the clinic time zone. -#}
{% macro local_date(timestamp_column) -%}
    cast(timezone('{{ clinic_timezone() }}', {{ timestamp_column }}) as date)
{%- endmacro %}

{#- Whether a UTC timestamp falls on a clinic calendar day before `day`: the same as
    `local_date(ts) < day`, but the time zone is looked up only for timestamps within two
    days of it (no zone is two days from UTC), so a column of millions of timestamps is
    mostly compared, not converted. Null when the timestamp is. -#}
{% macro before_local_day(timestamp_column, day) -%}
    case
        when {{ timestamp_column }} < timezone('UTC', cast(({{ day }}) - 2 as timestamp)) then true
        when {{ timestamp_column }} >= timezone('UTC', cast(({{ day }}) + 2 as timestamp)) then false
        else {{ local_date(timestamp_column) }} < {{ day }}
    end
{%- endmacro %}

{#- The birthday of someone born on `date_of_birth` in calendar year `year`:
    29 February falls on 28 February in non-leap years. -#}
{% macro birthday_in_year(date_of_birth, year) -%}
    make_date(
        {{ year }},
        month({{ date_of_birth }}),
        case
            when month({{ date_of_birth }}) = 2 and day({{ date_of_birth }}) = 29
                and not (({{ year }}) % 4 = 0 and (({{ year }}) % 100 <> 0 or ({{ year }}) % 400 = 0))
                then 28
            else day({{ date_of_birth }})
        end
    )
{%- endmacro %}

{#- A case is closed once its closed flag is set or its closed_at date has been reached. -#}
{% macro case_status(closed, closed_at) -%}
    case
        when coalesce({{ closed }}, false) then 'closed'
        when {{ closed_at }} is not null and {{ local_date(closed_at) }} <= {{ as_of_date() }} then 'closed'
        else 'open'
    end
{%- endmacro %}

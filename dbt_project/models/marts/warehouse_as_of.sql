-- The one as-of date and time zone every mart of this build was computed for, so a
-- reader of the warehouse can tell what "days since" and "upcoming" were relative to.
-- Built with the marts, after the day's extract is loaded:
-- depends_on: {{ ref('stg_raw__patients') }}
select
    {{ as_of_date() }} as as_of,
    cast('{{ clinic_timezone() }}' as varchar) as clinic_timezone,
    now() as built_at

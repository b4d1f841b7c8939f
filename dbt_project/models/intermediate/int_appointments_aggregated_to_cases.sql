-- Session counts per case from the appointments linked to it.
with appointments as (

    select * from {{ ref('int_appointments_classified') }}

),

counted as (

    select
        case_id,
        count(*) filter (where status = 'attended') as sessions_done,
        count(*) filter (where is_booked) as sessions_booked
    from appointments
    where case_id is not null
    group by case_id

)

select * from counted

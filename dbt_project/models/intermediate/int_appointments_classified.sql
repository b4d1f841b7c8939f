-- Every appointment with its class at the as-of date D (docs/warehouse.md).
-- Class precedence: cancelled > DNA > attended (date < D) / upcoming (date >= D), so a
-- future appointment already flagged did_not_arrive counts as DNA, never as upcoming.
with appointments as (

    select * from {{ ref('stg_raw__appointments') }}

),

localised as (

    select
        *,
        {{ local_date('starts_at') }} as start_date
    from appointments

),

classified as (

    select
        appointment_id,
        patient_id,
        case_id,
        appointment_type_id,
        practitioner_id,
        location_id,
        starts_at,
        start_date,
        ends_at,
        created_at,
        cancelled_at,
        did_not_arrive,
        patient_arrived,
        case
            when cancelled_at is not null then 'cancelled'
            when coalesce(did_not_arrive, false) then 'dna'
            when {{ before_local_day('starts_at', as_of_date()) }} then 'attended'
            else 'upcoming'
        end as status,
        cancelled_at is null as is_booked
    from localised

)

select * from classified

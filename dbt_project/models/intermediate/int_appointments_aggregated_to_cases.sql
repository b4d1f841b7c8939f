-- Session counts per case from the appointments linked to it. A case may count its
-- did-not-arrive and cancelled appointments as sessions too (Cliniko's
-- include_dna_attendees / include_cancelled_attendees): done then counts the past ones,
-- booked all of them.
with appointments as (

    select * from {{ ref('int_appointments_classified') }}

),

cases as (

    select case_id, sessions_include_cancelled, sessions_include_dna
    from {{ ref('stg_raw__cases') }}

),

counted as (

    select
        appointments.case_id,
        count(*) filter (
            where appointments.status = 'attended'
                or (appointments.status = 'dna' and coalesce(cases.sessions_include_dna, false))
                or (
                    appointments.status = 'cancelled'
                    and coalesce(cases.sessions_include_cancelled, false)
                    and appointments.start_date < {{ as_of_date() }}
                )
        ) as sessions_done,
        count(*) filter (
            where appointments.is_booked
                or (
                    appointments.status = 'cancelled'
                    and coalesce(cases.sessions_include_cancelled, false)
                )
        ) as sessions_booked
    from appointments
    left join cases on appointments.case_id = cases.case_id
    where appointments.case_id is not null
    group by appointments.case_id

)

select * from counted

-- Every appointment, classified at D and named: the events behind
-- `events: appointments` conditions.
with appointments as (

    select * from {{ ref('int_appointments_classified') }}

),

appointment_types as (

    select * from {{ ref('stg_raw__appointment_types') }}

),

practitioners as (

    select * from {{ ref('stg_raw__practitioners') }}

),

locations as (

    select * from {{ ref('stg_raw__locations') }}

),

named as (

    select
        appointments.appointment_id,
        appointments.patient_id,
        appointments.case_id,
        appointments.starts_at,
        appointments.start_date,
        appointments.ends_at,
        appointments.appointment_type_id,
        appointment_types.appointment_type_name as appointment_type,
        appointment_types.category,
        appointment_types.duration_minutes,
        appointments.practitioner_id,
        practitioners.practitioner_name,
        appointments.location_id,
        locations.location_name,
        appointments.status,
        appointments.is_booked,
        appointments.created_at,
        appointments.cancelled_at,
        appointments.did_not_arrive,
        appointments.patient_arrived
    from appointments
    left join appointment_types
        on appointments.appointment_type_id = appointment_types.appointment_type_id
    left join practitioners on appointments.practitioner_id = practitioners.practitioner_id
    left join locations on appointments.location_id = locations.location_id

)

select * from named

-- Every case with its patient's name and the practitioner, location and appointment
-- type of its most recent booked appointment: the drill-down behind case_features.
with cases as (

    select * from {{ ref('stg_raw__cases') }}

),

patients as (

    select * from {{ ref('stg_raw__patients') }}

),

latest_appointments as (

    select
        case_id,
        starts_at as last_booked_appointment_at,
        practitioner_id,
        location_id,
        appointment_type_id
    from {{ ref('int_appointments_classified') }}
    where case_id is not null and is_booked
    qualify row_number() over (
        partition by case_id order by starts_at desc, appointment_id desc
    ) = 1

),

practitioners as (

    select * from {{ ref('stg_raw__practitioners') }}

),

locations as (

    select * from {{ ref('stg_raw__locations') }}

),

appointment_types as (

    select * from {{ ref('stg_raw__appointment_types') }}

),

named as (

    select
        cases.case_id,
        cases.patient_id,
        patients.first_name as patient_first_name,
        patients.last_name as patient_last_name,
        cases.case_name as name,
        {{ case_status('cases.closed', 'cases.closed_at') }} as status,
        cases.issue_date,
        cases.expiry_date,
        cases.closed_at,
        cases.max_sessions,
        cases.max_invoiceable_amount,
        cases.referral_type,
        cases.referring_provider,
        latest_appointments.last_booked_appointment_at,
        latest_appointments.practitioner_id,
        practitioners.practitioner_name,
        latest_appointments.location_id,
        locations.location_name,
        latest_appointments.appointment_type_id,
        appointment_types.appointment_type_name as appointment_type
    from cases
    left join patients on cases.patient_id = patients.patient_id
    left join latest_appointments on cases.case_id = latest_appointments.case_id
    left join practitioners on latest_appointments.practitioner_id = practitioners.practitioner_id
    left join locations on latest_appointments.location_id = locations.location_id
    left join appointment_types
        on latest_appointments.appointment_type_id = appointment_types.appointment_type_id

)

select * from named

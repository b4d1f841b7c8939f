-- Appointment history per patient (only patients with at least one appointment):
-- visit dates and counts, cadence, and who / what the last attended visit was.
with appointments as (

    select
        appointments.*,
        appointment_types.appointment_type_name as appointment_type,
        appointment_types.category
    from {{ ref('int_appointments_classified') }} as appointments
    left join {{ ref('stg_raw__appointment_types') }} as appointment_types
        on appointments.appointment_type_id = appointment_types.appointment_type_id

),

history as (

    select
        patient_id,
        min(start_date) filter (where status = 'attended') as first_visit_date,
        max(start_date) filter (where status = 'attended') as last_visit_date,
        count(*) filter (where status = 'attended') as total_visits,
        count(*) filter (
            where status = 'attended' and start_date >= {{ as_of_date() }} - 365
        ) as visits_last_365d,
        count(*) filter (where status = 'dna') as dna_count,
        count(*) filter (where status = 'cancelled') as cancellation_count,
        min(starts_at) filter (where status = 'upcoming') as next_appointment_at,
        list_sort(list_distinct(list(category) filter (where status = 'attended')))
            as appointment_categories_attended,
        -- The last attended appointment: the latest start, then the highest id (two on the
        -- same last day resolve to the later one). arg_max_null keeps a null practitioner
        -- or type of that appointment instead of skipping to an earlier one; one aggregate
        -- carries all three fields of that appointment.
        arg_max_null(
            {'practitioner_id': practitioner_id, 'appointment_type': appointment_type,
             'category': category},
            (starts_at, appointment_id)
        ) filter (where status = 'attended') as last_attended
    from appointments
    group by patient_id

),

-- Up to 5 gaps between the 6 most recent distinct visit dates: the gap of rank r links
-- dates r and r + 1, so ranks 1..5 hold them; the oldest date's gap is null.
cadences as (

    select
        patient_id,
        case
            when count(*) >= 3
                then quantile_cont(cast(days_since_previous_visit as double), 0.5)
                    filter (where recency_rank <= 5)
        end as cadence_days
    from {{ ref('int_visits_sequenced') }}
    where recency_rank <= 6
    group by patient_id

),

practitioners as (

    select * from {{ ref('stg_raw__practitioners') }}

),

summarised as (

    select
        history.patient_id,
        history.first_visit_date,
        history.last_visit_date,
        {{ as_of_date() }} - history.last_visit_date as days_since_last_visit,
        history.next_appointment_at,
        history.total_visits,
        history.visits_last_365d,
        history.dna_count,
        history.cancellation_count,
        cadences.cadence_days,
        ({{ as_of_date() }} - history.last_visit_date) / cadences.cadence_days
            as cadence_overdue_ratio,
        history.last_attended.practitioner_id as last_practitioner_id,
        practitioners.practitioner_name as last_practitioner_name,
        -- Orphans: a practitioner who left (left_at on or before D, or marked inactive)
        -- or who is missing from the practitioner list is not active.
        case
            when history.last_attended.practitioner_id is null then null
            when practitioners.practitioner_id is null then false
            when practitioners.left_at is not null
                and {{ local_date('practitioners.left_at') }} <= {{ as_of_date() }} then false
            else coalesce(practitioners.active, true)
        end as last_practitioner_active,
        history.last_attended.appointment_type as last_appointment_type,
        history.last_attended.category as last_appointment_category,
        history.appointment_categories_attended
    from history
    left join cadences on history.patient_id = cadences.patient_id
    left join practitioners
        on history.last_attended.practitioner_id = practitioners.practitioner_id

)

select * from summarised

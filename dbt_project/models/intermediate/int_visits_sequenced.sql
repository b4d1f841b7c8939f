-- One row per patient and distinct attended visit date (several attended appointments on
-- one local day are one visit), numbered from the most recent, with the gap in days to
-- the patient's previous visit date. Cadence is measured on these gaps.
with attended_dates as (

    select distinct
        patient_id,
        start_date as visit_date
    from {{ ref('int_appointments_classified') }}
    where status = 'attended'

),

sequenced as (

    select
        patient_id,
        visit_date,
        row_number() over newest_first as recency_rank,
        -- One window (one sort): the previous visit is the next row, newest first.
        visit_date - lead(visit_date) over newest_first as days_since_previous_visit
    from attended_dates
    window newest_first as (partition by patient_id order by visit_date desc)

)

select * from sequenced

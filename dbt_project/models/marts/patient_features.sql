-- One row per patient (prospects included): the fields segments filter on.
with patients as (

    select * from {{ ref('int_patients_profiled') }}

),

visits as (

    select * from {{ ref('int_appointments_aggregated_to_patients') }}

),

money as (

    select * from {{ ref('int_invoices_aggregated_to_patients') }}

),

open_cases as (

    select
        patient_id,
        count(*) as open_case_count
    from {{ ref('stg_raw__cases') }}
    where {{ case_status('closed', 'closed_at') }} = 'open'
    group by patient_id

),

-- The patient's most recent lead; undated leads rank last.
latest_leads as (

    select
        patient_id,
        status as lead_status,
        campaign_name as lead_campaign,
        {{ local_date('created_at') }} as lead_created_date,
        owner as lead_owner,
        procedure_of_interest
    from {{ ref('stg_raw__leads') }}
    qualify row_number() over (
        partition by patient_id order by created_at desc nulls last, lead_id desc
    ) = 1

),

waitlisted as (

    select distinct patient_id
    from {{ ref('stg_raw__waitlist_entries') }}
    where removed_at is null or {{ local_date('removed_at') }} > {{ as_of_date() }}

),

diagnoses as (

    select
        patient_id,
        list_sort(list_distinct(list(code))) as diagnosis_codes
    from {{ ref('stg_raw__diagnoses') }}
    group by patient_id

),

features as (

    select
        patients.patient_id,
        patients.first_name,
        patients.last_name,
        patients.sex,
        patients.status,
        patients.state,
        patients.post_code,
        patients.city,
        patients.country,
        patients.referral_source,
        patients.referring_provider,
        patients.insurance_plan,
        patients.latitude,
        patients.longitude,
        patients.created_at,
        patients.age,
        patients.date_of_birth,
        patients.days_until_birthday,
        patients.email,
        patients.mobile,
        patients.has_email,
        patients.has_mobile,
        patients.has_whatsapp,
        patients.email_opted_out,
        patients.sms_opted_out,
        visits.first_visit_date,
        visits.last_visit_date,
        visits.days_since_last_visit,
        visits.next_appointment_at,
        coalesce(visits.total_visits, 0) as total_visits,
        coalesce(visits.visits_last_365d, 0) as visits_last_365d,
        coalesce(visits.dna_count, 0) as dna_count,
        coalesce(visits.cancellation_count, 0) as cancellation_count,
        visits.cadence_days,
        visits.cadence_overdue_ratio,
        visits.last_practitioner_id,
        visits.last_practitioner_name,
        visits.last_practitioner_active,
        visits.last_appointment_type,
        visits.last_appointment_category,
        coalesce(visits.appointment_categories_attended, []::varchar[])
            as appointment_categories_attended,
        coalesce(money.lifetime_value, 0) as lifetime_value,
        coalesce(money.total_paid, 0) as total_paid,
        coalesce(money.balance_due, 0) as balance_due,
        case
            when visits.total_visits > 0
                then cast(coalesce(money.lifetime_value, 0) / visits.total_visits as decimal(18, 2))
        end as avg_visit_fee,
        money.oldest_open_invoice_days,
        coalesce(open_cases.open_case_count, 0) as open_case_count,
        latest_leads.lead_status,
        latest_leads.lead_campaign,
        latest_leads.lead_created_date,
        latest_leads.lead_owner,
        latest_leads.procedure_of_interest,
        waitlisted.patient_id is not null as on_waitlist,
        coalesce(diagnoses.diagnosis_codes, []::varchar[]) as diagnosis_codes,
        patients.custom_fields
    from patients
    left join visits on patients.patient_id = visits.patient_id
    left join money on patients.patient_id = money.patient_id
    left join open_cases on patients.patient_id = open_cases.patient_id
    left join latest_leads on patients.patient_id = latest_leads.patient_id
    left join waitlisted on patients.patient_id = waitlisted.patient_id
    left join diagnoses on patients.patient_id = diagnoses.patient_id

)

select * from features

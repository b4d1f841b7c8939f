-- Every lead, and whether the person has booked since (any booked appointment).
with leads as (

    select * from {{ ref('stg_raw__leads') }}

),

booked_patients as (

    select distinct patient_id
    from {{ ref('int_appointments_classified') }}
    where is_booked

),

final as (

    select
        leads.lead_id,
        leads.patient_id,
        leads.campaign_name,
        leads.created_at,
        {{ local_date('leads.created_at') }} as created_date,
        leads.owner,
        leads.status,
        leads.procedure_of_interest,
        leads.source,
        booked_patients.patient_id is not null as has_appointment
    from leads
    left join booked_patients on leads.patient_id = booked_patients.patient_id

)

select * from final

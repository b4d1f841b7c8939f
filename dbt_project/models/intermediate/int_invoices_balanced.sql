-- Every invoice with what it is worth, what was paid and what is still due
-- (docs/warehouse.md), and the case it counts against.
with invoices as (

    select * from {{ ref('stg_raw__invoices') }}

),

-- Only appointments on a case can give an invoice its case: a small join side.
case_appointments as (

    select appointment_id, case_id
    from {{ ref('stg_raw__appointments') }}
    where case_id is not null

),

effective as (

    select
        invoices.invoice_id,
        invoices.patient_id,
        invoices.issue_date,
        -- An invoice without a status is treated as open: money may still be owed.
        coalesce(invoices.status, 'open') as status,
        invoices.total_amount,
        invoices.amount_paid as recorded_amount_paid,
        invoices.appointment_id,
        invoices.practitioner_id,
        coalesce(nullif(trim(invoices.case_id), ''), case_appointments.case_id) as case_id
    from invoices
    left join case_appointments
        on invoices.appointment_id = case_appointments.appointment_id

),

balanced as (

    select
        invoice_id,
        patient_id,
        issue_date,
        status,
        total_amount,
        cast(case
            when status in ('paid', 'closed') then total_amount
            when status = 'open' then coalesce(recorded_amount_paid, 0)
            else 0
        end as decimal(18, 2)) as amount_paid,
        cast(case
            when status = 'open' then total_amount - coalesce(recorded_amount_paid, 0)
            else 0
        end as decimal(18, 2)) as balance_due,
        status <> 'void' as counts_as_invoiced,
        case_id,
        appointment_id,
        practitioner_id
    from effective

),

final as (

    select
        *,
        case
            when balance_due > 0 then {{ as_of_date() }} - issue_date
        end as days_outstanding
    from balanced

)

select * from final

-- Money per patient (only patients with at least one invoice).
with invoices as (

    select * from {{ ref('int_invoices_balanced') }}

),

aggregated as (

    select
        patient_id,
        cast(coalesce(sum(total_amount) filter (where counts_as_invoiced), 0) as decimal(18, 2))
            as lifetime_value,
        cast(sum(amount_paid) as decimal(18, 2)) as total_paid,
        cast(sum(balance_due) as decimal(18, 2)) as balance_due,
        max(days_outstanding) as oldest_open_invoice_days
    from invoices
    group by patient_id

)

select * from aggregated

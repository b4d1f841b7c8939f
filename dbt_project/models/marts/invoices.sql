-- Every invoice with its effective payment, balance and case.
with invoices as (

    select * from {{ ref('int_invoices_balanced') }}

),

practitioners as (

    select * from {{ ref('stg_raw__practitioners') }}

),

named as (

    select
        invoices.invoice_id,
        invoices.patient_id,
        invoices.issue_date,
        invoices.status,
        invoices.total_amount,
        invoices.amount_paid,
        invoices.balance_due,
        invoices.case_id,
        invoices.appointment_id,
        invoices.practitioner_id,
        practitioners.practitioner_name,
        invoices.days_outstanding
    from invoices
    left join practitioners on invoices.practitioner_id = practitioners.practitioner_id

)

select * from named

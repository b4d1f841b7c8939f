-- Every invoice line with its invoice: what was billed, to whom, and when. Lines of an
-- invoice the extract does not hold are left out (reported by the staging relationship
-- test).
with items as (

    select * from {{ ref('stg_raw__invoice_items') }}

),

invoices as (

    select invoice_id, patient_id, issue_date, status
    from {{ ref('int_invoices_balanced') }}

),

joined as (

    select
        items.invoice_id,
        invoices.patient_id,
        invoices.issue_date,
        invoices.status as invoice_status,
        items.item_name,
        items.quantity,
        items.unit_price,
        cast(items.quantity * items.unit_price as decimal(18, 2)) as line_amount
    from items
    inner join invoices on items.invoice_id = invoices.invoice_id

)

select * from joined

with source as (

    select * from {{ source('raw', 'invoices') }}

),

renamed as (

    select
        invoice_id,
        patient_id,
        issue_date,
        total_amount,
        status,
        amount_paid,
        appointment_id,
        case_id,
        practitioner_id,
        _source_file as source_file,
        _source_row as source_row
    from source

)

select * from renamed

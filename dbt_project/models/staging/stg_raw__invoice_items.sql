with source as (

    select * from {{ source('raw', 'invoice_items') }}

),

renamed as (

    select
        invoice_id,
        item_name,
        quantity,
        unit_price,
        _source_file as source_file,
        _source_row as source_row
    from source

)

select * from renamed

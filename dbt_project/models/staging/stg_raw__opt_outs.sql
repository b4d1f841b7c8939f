with source as (

    select * from {{ source('raw', 'opt_outs') }}

),

renamed as (

    select
        patient_id,
        channel,
        opted_out_at,
        source,
        _source_file as source_file,
        _source_row as source_row
    from source

)

select * from renamed

with source as (

    select * from {{ source('raw', 'leads') }}

),

renamed as (

    select
        lead_id,
        patient_id,
        campaign_name,
        created_at,
        owner,
        status,
        procedure_of_interest,
        source,
        _source_file as source_file,
        _source_row as source_row
    from source

)

select * from renamed

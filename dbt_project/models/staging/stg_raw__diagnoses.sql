with source as (

    select * from {{ source('raw', 'diagnoses') }}

),

renamed as (

    select
        patient_id,
        code_system,
        code,
        recorded_at,
        _source_file as source_file,
        _source_row as source_row
    from source

)

select * from renamed

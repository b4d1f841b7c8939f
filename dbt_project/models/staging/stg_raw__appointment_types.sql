with source as (

    select * from {{ source('raw', 'appointment_types') }}

),

renamed as (

    select
        appointment_type_id,
        name as appointment_type_name,
        category,
        duration_minutes,
        _source_file as source_file,
        _source_row as source_row
    from source

)

select * from renamed

with source as (

    select * from {{ source('raw', 'waitlist') }}

),

renamed as (

    select
        waitlist_id,
        patient_id,
        appointment_type_id,
        practitioner_id,
        location_id,
        added_at,
        removed_at,
        _source_file as source_file,
        _source_row as source_row
    from source

)

select * from renamed

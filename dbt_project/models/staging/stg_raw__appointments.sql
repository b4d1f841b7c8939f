with source as (

    select * from {{ source('raw', 'appointments') }}

),

renamed as (

    select
        appointment_id,
        patient_id,
        starts_at,
        appointment_type_id,
        practitioner_id,
        location_id,
        case_id,
        ends_at,
        created_at,
        cancelled_at,
        did_not_arrive,
        patient_arrived,
        _source_file as source_file,
        _source_row as source_row
    from source

)

select * from renamed

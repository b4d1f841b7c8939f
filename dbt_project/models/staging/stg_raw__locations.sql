with source as (

    select * from {{ source('raw', 'locations') }}

),

renamed as (

    select
        location_id,
        name as location_name,
        city,
        state,
        post_code,
        latitude,
        longitude,
        time_zone,
        _source_file as source_file,
        _source_row as source_row
    from source

)

select * from renamed

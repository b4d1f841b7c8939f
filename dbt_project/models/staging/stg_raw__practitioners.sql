with source as (

    select * from {{ source('raw', 'practitioners') }}

),

renamed as (

    select
        practitioner_id,
        first_name,
        last_name,
        designation,
        active,
        left_at,
        nullif(trim(concat_ws(' ', first_name, last_name)), '') as practitioner_name,
        _source_file as source_file,
        _source_row as source_row
    from source

)

select * from renamed

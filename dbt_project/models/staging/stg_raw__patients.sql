with source as (

    select * from {{ source('raw', 'patients') }}

),

renamed as (

    select
        patient_id,
        first_name,
        last_name,
        date_of_birth,
        sex,
        email,
        mobile,
        has_whatsapp,
        address,
        city,
        state,
        post_code,
        country,
        latitude,
        longitude,
        referral_source,
        referring_provider,
        insurance_plan,
        status,
        accepted_email_marketing,
        accepted_sms_marketing,
        created_at,
        -- "Section / Field: value" for each field of the PMS's own (a JSON object of text);
        -- empty when there is none, null when the text is not such an object.
        case
            when custom_fields is null then []::varchar[]
            else list_sort(list_transform(
                map_entries(try_cast(try_cast(custom_fields as json) as map(varchar, varchar))),
                lambda entry: entry.key || ': ' || entry.value
            ))
        end as custom_fields,
        _source_file as source_file,
        _source_row as source_row
    from source

)

select * from renamed

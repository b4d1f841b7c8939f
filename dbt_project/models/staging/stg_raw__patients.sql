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
        _source_file as source_file,
        _source_row as source_row
    from source

)

select * from renamed

with source as (

    select * from {{ source('raw', 'cases') }}

),

renamed as (

    select
        case_id,
        patient_id,
        name as case_name,
        issue_date,
        expiry_date,
        max_sessions,
        max_invoiceable_amount,
        closed,
        closed_at,
        referral_type,
        referring_provider,
        coalesce(sessions_include_cancelled, false) as sessions_include_cancelled,
        coalesce(sessions_include_dna, false) as sessions_include_dna,
        _source_file as source_file,
        _source_row as source_row
    from source

)

select * from renamed

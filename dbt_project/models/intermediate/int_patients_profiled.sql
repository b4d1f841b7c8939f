-- One row per patient with what is known about the person at D: age and birthday,
-- whether they can be reached, and on which channels they opted out.
with patients as (

    select * from {{ ref('stg_raw__patients') }}

),

opt_outs as (

    select
        patient_id,
        bool_or(lower(channel) in ('email', 'all')) as opted_out_of_email,
        bool_or(lower(channel) in ('sms', 'all')) as opted_out_of_sms
    from {{ ref('stg_raw__opt_outs') }}
    -- An opt-out without a date is in force; a dated one from D onwards.
    where opted_out_at is null or {{ local_date('opted_out_at') }} <= {{ as_of_date() }}
    group by patient_id

),

birthdays as (

    select
        *,
        -- A date of birth after D is a data error: no age or birthday is derived from it.
        case when date_of_birth <= {{ as_of_date() }} then date_of_birth end as valid_birth_date,
        {{ birthday_in_year('valid_birth_date', 'year(' ~ as_of_date() ~ ')') }}
            as birthday_this_year,
        {{ birthday_in_year('valid_birth_date', 'year(' ~ as_of_date() ~ ') + 1') }}
            as birthday_next_year
    from patients

),

profiled as (

    select
        patients.patient_id,
        patients.first_name,
        patients.last_name,
        patients.sex,
        patients.status,
        patients.date_of_birth,
        year({{ as_of_date() }}) - year(patients.valid_birth_date)
            - case when patients.birthday_this_year > {{ as_of_date() }} then 1 else 0 end
            as age,
        case
            when patients.birthday_this_year >= {{ as_of_date() }}
                then patients.birthday_this_year - {{ as_of_date() }}
            else patients.birthday_next_year - {{ as_of_date() }}
        end as days_until_birthday,
        patients.email,
        patients.mobile,
        coalesce(
            regexp_full_match(trim(patients.email), '[^@\s]+@[^@\s]+\.[^@\s]+'), false
        ) as has_email,
        length(regexp_replace(coalesce(patients.mobile, ''), '[^0-9]', '', 'g')) >= 8
            as has_mobile,
        coalesce(patients.has_whatsapp, false)
            and length(regexp_replace(coalesce(patients.mobile, ''), '[^0-9]', '', 'g')) >= 8
            as has_whatsapp,
        coalesce(opt_outs.opted_out_of_email, false)
            or coalesce(patients.accepted_email_marketing = false, false) as email_opted_out,
        coalesce(opt_outs.opted_out_of_sms, false)
            or coalesce(patients.accepted_sms_marketing = false, false) as sms_opted_out,
        patients.address,
        patients.city,
        patients.state,
        patients.post_code,
        patients.country,
        patients.latitude,
        patients.longitude,
        patients.referral_source,
        patients.referring_provider,
        patients.insurance_plan,
        patients.custom_fields,
        patients.created_at
    from birthdays as patients
    left join opt_outs on patients.patient_id = opt_outs.patient_id

)

select * from profiled

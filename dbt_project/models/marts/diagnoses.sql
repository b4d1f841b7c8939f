-- Every recorded diagnosis or procedure code.
with diagnoses as (

    select * from {{ ref('stg_raw__diagnoses') }}

),

final as (

    select
        patient_id,
        code_system,
        code,
        recorded_at,
        {{ local_date('recorded_at') }} as recorded_date
    from diagnoses

)

select * from final

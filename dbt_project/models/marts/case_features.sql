-- One row per case: session and amount limits against what was used.
with cases as (

    select * from {{ ref('stg_raw__cases') }}

),

sessions as (

    select * from {{ ref('int_appointments_aggregated_to_cases') }}

),

invoiced as (

    -- Void invoices are left out by the aggregate's filter, not by a where clause: a
    -- filter on the invoices would make them look fewer than the appointments on a case,
    -- and the join that finds an invoice's case would then hold every invoice in memory
    -- instead of the appointments (5.9 s to 3.7 s of CPU at 1M). A case whose invoices
    -- are all void gets a null sum here, and 0 below, as before.
    select
        case_id,
        sum(total_amount) filter (where counts_as_invoiced) as total_invoiced
    from {{ ref('int_invoices_balanced') }}
    where case_id is not null
    group by case_id

),

combined as (

    select
        cases.case_id,
        cases.patient_id,
        cases.case_name as name,
        {{ case_status('cases.closed', 'cases.closed_at') }} as status,
        cases.issue_date,
        cases.expiry_date,
        cases.expiry_date - {{ as_of_date() }} as days_until_expiry,
        cases.max_sessions,
        coalesce(sessions.sessions_done, 0) as sessions_done,
        coalesce(sessions.sessions_booked, 0) as sessions_booked,
        cast(coalesce(invoiced.total_invoiced, 0) as decimal(18, 2)) as total_invoiced,
        cases.max_invoiceable_amount,
        cases.closed_at,
        cases.referral_type,
        cases.referring_provider
    from cases
    left join sessions on cases.case_id = sessions.case_id
    left join invoiced on cases.case_id = invoiced.case_id

),

final as (

    select
        case_id,
        patient_id,
        name,
        status,
        issue_date,
        expiry_date,
        days_until_expiry,
        max_sessions,
        sessions_done,
        sessions_booked,
        max_sessions - sessions_done as sessions_left,
        -- Percentages are null where the limit is missing or zero.
        case when max_sessions > 0 then 100.0 * sessions_booked / max_sessions end
            as pct_sessions_booked,
        case when max_sessions > 0 then 100.0 * sessions_done / max_sessions end
            as pct_sessions_done,
        total_invoiced,
        max_invoiceable_amount,
        cast(max_invoiceable_amount - total_invoiced as decimal(18, 2)) as invoiceable_left,
        case
            when max_invoiceable_amount > 0
                then cast(100.0 * total_invoiced / max_invoiceable_amount as double)
        end as pct_invoiced,
        closed_at,
        referral_type,
        referring_provider
    from combined

)

select * from final

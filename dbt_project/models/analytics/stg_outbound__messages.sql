{{ config(materialized='view') }}
-- Patient messages that went out (status `sent`), one row per ledger row. Staff digests,
-- failed, sandbox and unknown rows are not messages a patient is known to have received.
with ledger as (

    select
        id as message_id,
        campaign,
        segment_slug,
        patient_id,
        case_id,
        channel,
        send_date,
        created_at as sent_at,
        status,
        recipient
    from {{ source('outbound', 'send_ledger') }}


)

select
    message_id,
    campaign,
    segment_slug,
    patient_id,
    case_id,
    channel,
    send_date,
    sent_at
from ledger
where status = 'sent'
    and recipient <> 'staff'

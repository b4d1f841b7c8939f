{{ config(materialized='view') }}
-- Patient messages that went out (status `sent`), one row per ledger row. Staff digests,
-- failed, sandbox and unknown rows are not messages a patient is known to have received.
{%- set ledger = source('outbound', 'send_ledger') %}
{%- set ledger_exists = adapter.get_relation(
        database=ledger.database, schema=ledger.schema, identifier=ledger.identifier) %}

with ledger as (

{% if ledger_exists or not execute %}
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
    from {{ ledger }}
{% else %}
    -- The outbound assets have not run yet on this warehouse: no messages.
    select
        cast(null as varchar) as message_id,
        cast(null as varchar) as campaign,
        cast(null as varchar) as segment_slug,
        cast(null as varchar) as patient_id,
        cast(null as varchar) as case_id,
        cast(null as varchar) as channel,
        cast(null as date) as send_date,
        cast(null as timestamptz) as sent_at,
        cast(null as varchar) as status,
        cast(null as varchar) as recipient
    where false
{% endif %}

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

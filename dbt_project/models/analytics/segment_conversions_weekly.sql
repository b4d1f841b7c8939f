-- Conversion by the segment the message was sent to, and week.
select
    send_week,
    segment_slug,
    {{ conversion_measures() }}
from {{ ref('message_conversions') }}
group by send_week, segment_slug

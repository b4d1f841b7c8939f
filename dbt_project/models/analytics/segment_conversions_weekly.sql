-- Conversion by the segment the message was sent to, and week.
select
    send_week,
    segment_slug,
    count(*) as messages,
    count(*) filter (where converted) as conversions,
    round(count(*) filter (where converted) / count(*), 4) as conversion_rate,
    sum(bookings) as bookings,
    cast(sum(revenue) as decimal(18, 2)) as revenue
from {{ ref('message_conversions') }}
group by send_week, segment_slug

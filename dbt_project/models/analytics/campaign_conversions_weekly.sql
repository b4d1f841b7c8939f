-- Conversion by campaign and week (weeks start on Monday, by send date).
select
    send_week,
    campaign,
    {{ conversion_measures() }}
from {{ ref('message_conversions') }}
group by send_week, campaign

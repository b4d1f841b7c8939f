{# The conversion measures every analytics rollup reports, over message_conversions rows. #}
{% macro conversion_measures() %}
    count(*) as messages,
    count(*) filter (where converted) as conversions,
    round(count(*) filter (where converted) / count(*), 4) as conversion_rate,
    sum(bookings) as bookings,
    cast(sum(revenue) as decimal(18, 2)) as revenue
{% endmacro %}

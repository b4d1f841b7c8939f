-- One row per patient message: did the patient book within 30 days after it, and which
-- bookings (and their invoiced revenue) it is credited with.
--
-- A message converts when the patient makes a booking (an appointment, not cancelled,
-- created after the message and at most 30 days after it). Several messages may convert
-- on the same booking; the booking itself, and its revenue, is credited once, to the
-- most recent message before it (last touch), so totals never double count.
-- Booking time is the appointment's created_at; when the PMS did not record it, the
-- appointment start is used instead.
with messages as (

    select * from {{ ref('stg_outbound__messages') }}

),

bookings as (

    select
        appointment_id,
        patient_id,
        coalesce(created_at, starts_at) as booked_at
    from {{ ref('appointments') }}
    where cancelled_at is null

),

bookings_in_window as (

    select
        messages.message_id,
        messages.sent_at,
        bookings.appointment_id,
        bookings.booked_at
    from messages
    inner join bookings
        on bookings.patient_id = messages.patient_id
        and bookings.booked_at > messages.sent_at
        and bookings.booked_at <= messages.sent_at + interval 30 day

),

last_touch as (

    -- Each booking goes to the latest message before it (ties: the smaller message id).
    select
        appointment_id,
        message_id
    from bookings_in_window
    qualify row_number() over (
        partition by appointment_id order by sent_at desc, message_id
    ) = 1

),

-- Revenue only of the bookings some message is credited with: the invoices are read
-- once, and only those rows are summed.
appointment_revenue as (

    select
        appointment_id,
        sum(total_amount) as revenue
    from {{ ref('invoices') }}
    where status <> 'void'
        and appointment_id in (select appointment_id from last_touch)
    group by appointment_id

),

credited as (

    select
        last_touch.message_id,
        count(*) as bookings,
        sum(coalesce(appointment_revenue.revenue, 0)) as revenue
    from last_touch
    left join appointment_revenue on appointment_revenue.appointment_id = last_touch.appointment_id
    group by last_touch.message_id

),

first_booking as (

    select
        message_id,
        min(booked_at) as first_booking_at
    from bookings_in_window
    group by message_id

)

select
    messages.message_id,
    messages.campaign,
    messages.segment_slug,
    messages.patient_id,
    messages.case_id,
    messages.channel,
    messages.send_date,
    messages.sent_at,
    cast(date_trunc('week', messages.send_date) as date) as send_week,
    first_booking.first_booking_at is not null as converted,
    first_booking.first_booking_at,
    coalesce(credited.bookings, 0) as bookings,
    cast(coalesce(credited.revenue, 0) as decimal(18, 2)) as revenue
from messages
left join first_booking on first_booking.message_id = messages.message_id
left join credited on credited.message_id = messages.message_id

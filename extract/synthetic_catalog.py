"""Reference data for the synthetic clinic generator: sites, services, names, codes.

Everything here is invented or generic (street names, common first and last names,
public ICD-10 / CPT codes); no record describes a real person.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Site:
    name: str
    address: str
    city: str
    state: str
    post_code: str
    latitude: float
    longitude: float
    time_zone: str
    share: float  # share of the clinic group's patients who live near this site
    area_code: str  # landline prefix for patients living nearby
    suburbs: tuple[tuple[str, str], ...]  # (suburb, post code) within ~15 km


SITES: tuple[Site, ...] = (
    Site(
        "Sydney CBD", "Level 3, 135 King Street", "Sydney", "NSW", "2000",
        -33.8688, 151.2093, "Australia/Sydney", 0.25, "02",
        (("Surry Hills", "2010"), ("Pyrmont", "2009"), ("Glebe", "2037"), ("Redfern", "2016"),
         ("Newtown", "2042"), ("Ultimo", "2007"), ("Darlinghurst", "2010"), ("Balmain", "2041")),
    ),
    Site(
        "Parramatta", "88 Church Street", "Parramatta", "NSW", "2150",
        -33.8150, 151.0011, "Australia/Sydney", 0.20, "02",
        (("Westmead", "2145"), ("Harris Park", "2150"), ("Granville", "2142"),
         ("North Parramatta", "2151"), ("Merrylands", "2160"), ("Toongabbie", "2146"),
         ("Carlingford", "2118")),
    ),
    Site(
        "Bondi Junction", "500 Oxford Street", "Bondi Junction", "NSW", "2022",
        -33.8930, 151.2474, "Australia/Sydney", 0.15, "02",
        (("Bondi", "2026"), ("Bronte", "2024"), ("Coogee", "2034"), ("Randwick", "2031"),
         ("Paddington", "2021"), ("Double Bay", "2028"), ("Waverley", "2024")),
    ),
    Site(
        "Chatswood", "12 Help Street", "Chatswood", "NSW", "2067",
        -33.7969, 151.1803, "Australia/Sydney", 0.15, "02",
        (("Willoughby", "2068"), ("Lane Cove", "2066"), ("Artarmon", "2064"),
         ("Roseville", "2069"), ("St Leonards", "2065"), ("Killara", "2071")),
    ),
    Site(
        "Melbourne CBD", "220 Collins Street", "Melbourne", "VIC", "3000",
        -37.8150, 144.9665, "Australia/Melbourne", 0.15, "03",
        (("Carlton", "3053"), ("Fitzroy", "3065"), ("Richmond", "3121"), ("South Yarra", "3141"),
         ("St Kilda", "3182"), ("Brunswick", "3056"), ("Docklands", "3008")),
    ),
    Site(
        "Brisbane City", "100 Queen Street", "Brisbane", "QLD", "4000",
        -27.4698, 153.0251, "Australia/Brisbane", 0.10, "07",
        (("Fortitude Valley", "4006"), ("New Farm", "4005"), ("South Brisbane", "4101"),
         ("Toowong", "4066"), ("Kangaroo Point", "4169"), ("West End", "4101")),
    ),
)
TIME_ZONES: tuple[str, ...] = tuple(sorted({s.time_zone for s in SITES}))


@dataclass(frozen=True)
class Service:
    name: str
    category: str
    duration_minutes: int
    fee_cents: int


# Appointment types; their ids are their 1-based position here.
SERVICES: tuple[Service, ...] = (
    Service("Physio Initial Consultation", "Physio", 45, 11000),
    Service("Physio Follow-up", "Physio", 30, 9000),
    Service("Chiro Initial Consultation", "Chiro", 45, 9500),
    Service("Chiro Adjustment", "Chiro", 20, 7000),
    Service("Podiatry Consultation", "Podiatry", 30, 8500),
    Service("Remedial Massage 60 min", "Massage", 60, 11000),
    Service("Remedial Massage 30 min", "Massage", 30, 6500),
    Service("Clinical Pilates Class", "Pilates", 55, 4500),
    Service("Surgical Consultation", "Surgery", 30, 25000),
    Service("Pre-op Assessment", "Pre-op", 45, 15000),
)
SERVICE_INDEX = {s.name: i for i, s in enumerate(SERVICES)}


@dataclass(frozen=True)
class CourseKind:
    """How patients use one line of treatment: cadence, length, who delivers it."""

    category: str
    first_service: str
    next_service: str
    patient_share: float  # share of patients for whom this is the main kind of treatment
    cadences: tuple[int, ...]  # days between visits
    cadence_p: tuple[float, ...]
    min_visits: int
    mean_extra_visits: float  # geometric extra visits on top of min_visits
    case_share: float  # share of courses run under a referral case
    designation: str  # practitioners who deliver it


COURSE_KINDS: tuple[CourseKind, ...] = (
    CourseKind("Physio", "Physio Initial Consultation", "Physio Follow-up", 0.44,
               (7, 14, 28), (0.45, 0.40, 0.15), 2, 6.0, 0.22, "Physiotherapist"),
    CourseKind("Chiro", "Chiro Initial Consultation", "Chiro Adjustment", 0.15,
               (7, 14, 28), (0.30, 0.40, 0.30), 3, 7.0, 0.10, "Chiropractor"),
    CourseKind("Podiatry", "Podiatry Consultation", "Podiatry Consultation", 0.10,
               (28, 42), (0.5, 0.5), 1, 3.0, 0.30, "Podiatrist"),
    CourseKind("Massage", "Remedial Massage 60 min", "Remedial Massage 60 min", 0.15,
               (14, 28), (0.4, 0.6), 1, 5.0, 0.05, "Remedial Massage Therapist"),
    CourseKind("Pilates", "Clinical Pilates Class", "Clinical Pilates Class", 0.12,
               (7,), (1.0,), 6, 12.0, 0.0, "Physiotherapist"),
    # Surgical pathway: consults, then a pre-op assessment with a clinical nurse.
    CourseKind("Surgery", "Surgical Consultation", "Surgical Consultation", 0.04,
               (14, 21), (0.5, 0.5), 1, 1.0, 0.0, "Orthopaedic Surgeon"),
)
SURGERY_KIND = next(i for i, k in enumerate(COURSE_KINDS) if k.category == "Surgery")
MASSAGE_KIND = next(i for i, k in enumerate(COURSE_KINDS) if k.category == "Massage")
PRE_OP_DESIGNATION = "Clinical Nurse"

# Every designation is staffed at least once; further practitioners follow these shares.
DESIGNATIONS: tuple[tuple[str, float], ...] = (
    ("Physiotherapist", 0.50),
    ("Chiropractor", 0.12),
    ("Podiatrist", 0.10),
    ("Remedial Massage Therapist", 0.15),
    ("Orthopaedic Surgeon", 0.07),
    (PRE_OP_DESIGNATION, 0.06),
)


@dataclass(frozen=True)
class Referral:
    referral_type: str
    max_sessions: int
    valid_days: int
    share: float


REFERRALS: tuple[Referral, ...] = (
    Referral("EPC", 5, 365, 0.6),  # Medicare chronic disease plan: 5 sessions a year
    Referral("DVA", 12, 365, 0.2),
    Referral("WorkCover", 8, 90, 0.2),
)

# Extra invoice lines sold with a visit.
EXTRA_ITEMS: tuple[tuple[str, int], ...] = (
    ("Theraband", 1500),
    ("Dry needling", 2000),
    ("Orthotic insoles", 9000),
    ("Hot/cold pack", 2500),
    ("Home exercise program", 1000),
)
MISSED_APPOINTMENT_FEE = ("Missed appointment fee", 5000)

FEMALE_NAMES = (
    "Olivia", "Charlotte", "Amelia", "Isla", "Mia", "Ava", "Grace", "Chloe", "Emily", "Sophie",
    "Zoe", "Ruby", "Lucy", "Hannah", "Sarah", "Jessica", "Emma", "Priya", "Mei", "Aisha",
    "Fatima", "Sienna", "Matilda", "Harper", "Evelyn", "Lily", "Ella", "Georgia", "Anh", "Leila",
)
MALE_NAMES = (
    "Oliver", "Noah", "Jack", "William", "Leo", "Lucas", "Thomas", "Henry", "James", "Liam",
    "Ethan", "Samuel", "Daniel", "Benjamin", "Lachlan", "Cooper", "Hamish", "Arjun", "Wei",
    "Minh", "Mohammed", "Ali", "Nathan", "Joshua", "Ryan", "Patrick", "Sean", "Luca", "Marco",
    "Hiroshi",
)
LAST_NAMES = (
    "Smith", "Jones", "Williams", "Brown", "Wilson", "Taylor", "Nguyen", "Johnson", "Martin",
    "White", "Anderson", "Walker", "Thompson", "Thomas", "Lee", "Ryan", "Chen", "Kelly", "King",
    "Harris", "Lewis", "Robinson", "Clarke", "Wright", "Mitchell", "Campbell", "Hall", "Young",
    "Wang", "Scott", "Green", "Evans", "Patel", "Singh", "Tran", "Kaur", "O'Brien", "Murphy",
    "Papadopoulos", "Rossi", "Hughes", "Edwards", "Turner", "Morris", "Cooper", "Ward", "Baker",
    "Hill", "Moore", "Murray", "Stewart", "Zhang", "Li", "Kim", "Park", "Hassan", "Ahmed",
    "Costa", "Russo", "Fraser",
)
STREETS = (
    "George", "Victoria", "Albert", "King", "Queen", "Elizabeth", "Church", "High", "Park",
    "Station", "Railway", "Bridge", "Hill", "Wattle", "Banksia", "Ocean", "Pacific", "Edward",
    "William", "Grey",
)
STREET_TYPES = ("Street", "Road", "Avenue", "Parade", "Lane", "Crescent", "Place", "Drive")
EMAIL_DOMAINS = ("example.com", "example.net", "example.org", "mail.example.com")

# Referring GPs (Cliniko: contacts): title, first, last, practice.
GPS: tuple[tuple[str, str, str], ...] = (
    ("Helen", "Marsh", "Harbour Medical Centre"),
    ("Rajesh", "Iyer", "Westside Family Practice"),
    ("Claire", "Donovan", "Eastern Suburbs GP"),
    ("Michael", "Okafor", "North Shore Medical"),
    ("Susan", "Leung", "Collins Street Clinic"),
    ("Peter", "Walsh", "River City Doctors"),
    ("Nadia", "Haddad", "Inner West Health"),
    ("Tom", "Galloway", "Bayside Medical Group"),
)

REFERRAL_SOURCES = (
    ("GP referral", 0.22), ("Google", 0.20), ("Friend or family", 0.16), ("Facebook", 0.08),
    ("Instagram", 0.05), ("Walk-in", 0.07), ("Health fund", 0.06), ("Returning patient", 0.06),
    ("Seminar", 0.02), (None, 0.08),
)
INSURANCE_PLANS = (
    ("Medibank", 0.22), ("Bupa", 0.20), ("HCF", 0.12), ("NIB", 0.10), ("DVA", 0.03),
    ("none", 0.28), (None, 0.05),
)
STAFF = ("sam@clinic.example", "priya@clinic.example", "jordan@clinic.example",
         "alex@clinic.example")

# ICD-10 codes by course kind (index into COURSE_KINDS), and procedure (CPT) codes.
ICD10_BY_KIND: tuple[tuple[str, ...], ...] = (
    ("M54.5", "M25.561", "M75.1", "S83.5", "M54.2", "M17.11"),  # Physio
    ("M54.5", "M54.2", "G44.2", "M99.03"),  # Chiro
    ("M72.2", "M79.671", "L60.0", "M20.1"),  # Podiatry
    ("M62.83", "M54.6", "M79.1"),  # Massage
    ("M54.5", "M62.81", "M81.0"),  # Pilates
    ("M17.11", "M16.11", "M75.121", "S83.511A"),  # Surgery
)
CPT_BY_KIND: tuple[tuple[str, ...], ...] = (
    ("97161", "97110", "97140"),
    ("98940", "98941"),
    ("11721", "11055"),
    ("97124",),
    ("97110", "97530"),
    ("27447", "27130", "29881", "29827"),
)

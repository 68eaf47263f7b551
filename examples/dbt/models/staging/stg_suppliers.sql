-- One row per supplier.
select
    supplier_id,
    name as supplier_name,
    contact_email,
    country,
    lead_time_days
from {{ source('claro', 'suppliers') }}

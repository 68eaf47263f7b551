-- One row per product: the catalogue's current values, renamed for analysis.
select
    sku,
    title,
    description,
    brand,
    gtin,
    mpn,
    price,
    weight as weight_kg,
    length as length_cm,
    width as width_cm,
    colour,
    size,
    category,
    image_url,
    launch_date,
    supplier as supplier_id,
    status
from {{ source('claro', 'products') }}

-- Data quality per brand: how many products miss what a channel needs, and how complete they are on
-- average (the share of the eight attributes a listing needs that have a value, 0-100).
with scored as (
    select
        *,
        (case when title is not null then 1 else 0 end
         + case when description is not null then 1 else 0 end
         + case when gtin is not null then 1 else 0 end
         + case when price is not null then 1 else 0 end
         + case when image_url is not null then 1 else 0 end
         + case when weight_kg is not null then 1 else 0 end
         + case when colour is not null then 1 else 0 end
         + case when category is not null then 1 else 0 end) / 8.0 as completeness
    from {{ ref('stg_products') }}
)

select
    coalesce(brand, '(no brand)') as brand,
    count(*) as products,
    count(*) filter (where status = 'active') as active_products,
    count(*) filter (where gtin is null) as missing_gtin,
    count(*) filter (where image_url is null) as missing_image,
    count(*) filter (where description is null) as missing_description,
    count(*) filter (where price is null) as missing_price,
    count(*) filter (where supplier_id is null) as missing_supplier,
    round(100 * avg(completeness), 1) as completeness_pct
from scored
group by 1

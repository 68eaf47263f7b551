-- Price changes per supplier: grouped by the source that sent the new price (each supplier's feed, e.g.
-- `globex_xlsx`) and the supplier record the product references (null when the product names none).
with price_changes as (
    select
        h.sku,
        h.source,
        h.changed_at,
        h.old_value::numeric as old_price,
        h.new_value::numeric as new_price
    from {{ ref('stg_product_history') }} as h
    where h.field = 'price'
      and h.kind <> 'schema'
      and h.old_value is not null
      and h.new_value is not null
)

select
    c.source,
    p.supplier_id,
    s.supplier_name,
    count(*) as price_changes,
    count(distinct c.sku) as products_changed,
    count(*) filter (where c.new_price > c.old_price) as increases,
    count(*) filter (where c.new_price < c.old_price) as decreases,
    round(avg(100 * (c.new_price - c.old_price) / nullif(c.old_price, 0)), 2) as avg_change_pct,
    round(max(abs(100 * (c.new_price - c.old_price) / nullif(c.old_price, 0))), 2) as largest_change_pct,
    min(c.changed_at) as first_change_at,
    max(c.changed_at) as last_change_at
from price_changes as c
left join {{ ref('stg_products') }} as p on p.sku = c.sku
left join {{ ref('stg_suppliers') }} as s on s.supplier_id = p.supplier_id
group by c.source, p.supplier_id, s.supplier_name

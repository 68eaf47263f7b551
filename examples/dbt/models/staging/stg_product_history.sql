-- One row per change of one field of one product, with who or what made it. Values are stored as JSON
-- text (a number, a string or null): `#>> '{}'` unwraps the scalar to text.
-- A record's first values are not here: creating a record writes no history row.
select
    h.id as history_id,
    h.record as sku,
    h.field,
    h.old::jsonb #>> '{}' as old_value,
    h.new::jsonb #>> '{}' as new_value,
    h.kind,
    h.reason,
    h.change_set,
    h.proposal as review_item,
    h.at as changed_at,
    p.operation,
    p.source,
    p.reviewer,
    p.confidence
from {{ source('claro', 'products_history') }} as h
left join {{ source('claro', 'products_provenance') }} as p on p.id = h.new_prov
where h.catalogue = 'products'

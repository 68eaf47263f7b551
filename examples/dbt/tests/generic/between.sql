{#- Rows whose value lies outside [min_value, max_value] (either bound may be left out). Nulls pass: pair with
    not_null where a value is required. Written here because the project installs no dbt packages. -#}
{% test between(model, column_name, min_value=none, max_value=none) %}
select {{ column_name }} as value
from {{ model }}
where {{ column_name }} is not null
  and (
    false
    {% if min_value is not none %} or {{ column_name }} < {{ min_value }} {% endif %}
    {% if max_value is not none %} or {{ column_name }} > {{ max_value }} {% endif %}
  )
{% endtest %}

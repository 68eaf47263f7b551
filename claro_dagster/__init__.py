"""claro_dagster: continuous product-catalogue automation on Dagster."""

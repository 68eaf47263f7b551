"""The spec's common units are checked without pint's registry (it costs most of a second of every command that
reads the spec); each must be a unit pint understands, so the shortcut never accepts what pint would refuse."""

from __future__ import annotations

import pint

from claro_dagster.spec.checks import COMMON_UNITS, _unit_ok


def test_every_common_unit_is_a_unit_pint_understands():
    registry = pint.UnitRegistry()
    for unit in sorted(COMMON_UNITS):
        registry.Unit(unit)  # raises for a unit pint does not know


def test_other_units_are_still_asked_of_pint():
    assert _unit_ok("fluid_ounce") and _unit_ok("kilowatt_hour")
    assert not _unit_ok("kilo") and not _unit_ok("stone-ish")

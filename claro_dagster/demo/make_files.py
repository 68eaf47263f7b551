"""Regenerate the demo supplier files in ``claro_dagster/demo/inbox/<source>/``:
``python claro_dagster/demo/make_files.py``.

The files are committed; this script keeps them reproducible (byte for byte: no clock, no randomness)
and documents the flaws planted in them on purpose. Every flaw is one a real supplier file has:
Excel-damaged barcodes, mixed units, synonyms instead of enum values, HTML pasted from a web shop,
prices in several notations, missing titles, a repeated SKU, a title row above the header.
It also writes ``inbox/README.md``, which lists each flaw with its line or row.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import zipfile
from pathlib import Path

import openpyxl
from openpyxl.styles import Alignment, Font
from stdnum import ean

HERE = Path(__file__).resolve().parent
OUT = HERE / "inbox"  # one folder per demo source, as the spec's inbox paths name them
FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def gtin13(body12: str) -> str:
    """A valid EAN-13 from its first 12 digits (GS1 check digit via python-stdnum)."""
    return body12 + ean.calc_check_digit(body12)


def bad_check_digit(code: str) -> str:
    return code[:-1] + str((int(code[-1]) + 1) % 10)


# ---------------------------------------------------------------------------------------------
# suppliers.csv

SUPPLIERS = [
    ("SUP-0001", "Acme Outdoor Ltd", "data@acme.example.com", "GB", "14"),
    ("SUP-0002", "Globex Apparel GmbH", "catalogue@globex.example.com", "DE", "21"),
    ("SUP-0003", "Initech Homeware Ltd", "orders@initech.example.com", "IE", "10"),
    ("SUP-0004", "Umbrella Footwear S.L.", "ventas@umbrella.example.com", "ES", "30"),
    ("SUP-0005", "Soylent Accessories B.V.", "hello@soylent.example.com", "NL", "7"),
    # Acme again, under another id and spelling: Find Duplicates (`suppliers/dedupe`) proposes merging it.
    ("SUP-0006", "ACME Outdoor Limited", "data@acme.example.com", "GB", "14"),
]


def write_suppliers() -> None:
    with open(OUT / "suppliers" / "suppliers.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["supplier_id", "name", "contact_email", "country", "lead_time_days"])
        writer.writerows(SUPPLIERS)


# ---------------------------------------------------------------------------------------------
# acme_products.csv: UTF-8, comma separated, 40 rows

ACME_HEADER = [
    "Product Code", "Product Name", "Description", "Brand", "EAN", "MPN", "Price (GBP)", "Weight",
    "Length (cm)", "Width (cm)", "Colour", "Size", "Category", "Image URL", "Launch Date", "Supplier",
    "Status",
]

# (name, category, colour, size, price, weight kg, length, width, description)
ACME_PRODUCTS = [
    ("Trailblazer 2 Tent", "outdoor", "green", "", "189.00", "2.4", "210", "130", "Two-person backpacking tent."),
    ("Summit Down Jacket", "apparel", "black", "M", "149.99", "0.62", "70", "55", "Lightweight 650-fill down."),
    ("Summit Down Jacket", "apparel", "black", "L", "149.99", "0.66", "72", "57", "Lightweight 650-fill down."),
    ("Ridge Hiking Boot", "footwear", "brown", "", "119.00", "1.3", "32", "12", "Waterproof leather boot."),
    ("Ridge Hiking Boot Womens", "footwear", "grey", "", "119.00", "1.1", "30", "11", "Waterproof leather boot."),
    ("Canyon 30L Daypack", "accessories", "red", "", "64.50", "0.85", "50", "30", "30 litre daypack."),
    ("Canyon 45L Pack", "accessories", "blue", "", "94.50", "1.4", "65", "34", "45 litre trekking pack."),
    ("Alpine Merino Base Layer", "apparel", "navy", "S", "54.00", "0.21", "68", "48", "Merino wool top."),
    ("Alpine Merino Base Layer", "apparel", "navy", "M", "54.00", "0.23", "70", "50", "Merino wool top."),
    ("Glacier Insulated Bottle", "accessories", "white", "", "24.99", "0.4", "27", "8", "Keeps drinks cold 24h."),
    ("Glacier Insulated Bottle", "accessories", "black", "", "24.99", "0.4", "27", "8", "Keeps drinks cold 24h."),
    ("Storm Shell Jacket", "apparel", "yellow", "XL", "169.00", "0.48", "76", "60", "3-layer waterproof shell."),
    ("Storm Shell Jacket", "apparel", "red", "L", "169.00", "0.47", "74", "58", "3-layer waterproof shell."),
    ("Basecamp Camping Chair", "outdoor", "green", "", "39.99", "1.9", "80", "50", "Folding camp chair."),
    ("Basecamp Table", "outdoor", "grey", "", "59.99", "3.2", "90", "60", "Aluminium roll-top table."),
    ("Trek Poles (pair)", "accessories", "black", "", "44.00", "0.52", "135", "6", "Carbon trekking poles."),
    ("Fleece Midlayer", "apparel", "blue", "S", "45.00", "0.35", "66", "50", "Recycled grid fleece."),
    ("Fleece Midlayer", "apparel", "blue", "XXL", "45.00", "0.44", "78", "62", "Recycled grid fleece."),
    ("Headlamp 400", "accessories", "black", "", "34.95", "0.09", "8", "5", "400 lumen rechargeable."),
    ("Sleeping Bag -5C", "outdoor", "navy", "", "129.00", "1.45", "220", "80", "Three-season synthetic bag."),
    ("Sleeping Mat", "outdoor", "red", "", "69.00", "0.55", "183", "51", "Self-inflating mat."),
    ("Trail Running Shoe", "footwear", "multicolour", "", "99.00", "0.6", "31", "11", "Grippy trail shoe."),
    ("Rain Poncho", "apparel", "green", "M", "19.99", "0.3", "120", "90", "Packable poncho."),
    ("Camp Stove", "outdoor", "grey", "", "49.00", "0.35", "15", "15", "Compact gas stove."),
    ("Cook Set", "homeware", "grey", "", "36.00", "0.7", "20", "20", "Anodised pot set."),
    ("Enamel Mug", "homeware", "white", "", "9.50", "0.25", "10", "9", "Classic enamel mug."),
    ("Wool Beanie", "accessories", "grey", "", "18.00", "0.08", "25", "20", "Ribbed merino beanie."),
    ("Hiking Socks (3 pack)", "apparel", "black", "L", "21.00", "0.2", "30", "12", "Cushioned hiking socks."),
    ("Softshell Trousers", "apparel", "black", "M", "79.00", "0.45", "105", "40", "Stretch softshell."),
    ("Softshell Trousers", "apparel", "black", "XS", "79.00", "0.4", "98", "36", "Stretch softshell."),
    ("Gaiters", "accessories", "black", "", "29.00", "0.3", "40", "20", "Waterproof gaiters."),
    ("Dry Bag 20L", "accessories", "yellow", "", "17.50", "0.15", "50", "25", "Roll-top dry bag."),
    ("Compass Pro", "accessories", "red", "", "31.00", "0.07", "12", "6", "Baseplate compass."),
    ("First Aid Kit", "accessories", "red", "", "27.00", "0.32", "18", "12", "Trail first aid kit."),
    ("Insulated Gloves", "accessories", "black", "S", "38.00", "0.16", "28", "14", "Primaloft gloves."),
    ("Sun Hat", "accessories", "white", "L", "22.00", "0.1", "36", "36", "UPF 50 sun hat."),
    ("Water Filter", "outdoor", "blue", "", "42.00", "0.11", "16", "6", "Squeeze water filter."),
    ("Lantern", "outdoor", "green", "", "26.00", "0.3", "18", "10", "LED camping lantern."),
    ("Hammock", "outdoor", "multicolour", "", "48.00", "0.6", "280", "140", "Parachute nylon hammock."),
]


def acme_rows() -> tuple[list[list[str]], list[str]]:
    """The 40 Acme rows (after the header) and the flaws planted in them."""
    rows = []
    for i, (name, category, colour, size, price, weight, length, width, desc) in enumerate(ACME_PRODUCTS):
        n = 10001 + i
        rows.append([
            f"ACM-{n}", name, desc, "Acme Outdoor", gtin13(f"506012300{n % 1000:03d}"), f"AO-{n}-{i % 7}",
            price, weight, length, width, colour, size, category,
            f"https://cdn.acme.example.com/img/ACM-{n}.jpg", f"2024-{(i % 12) + 1:02d}-{(i % 27) + 1:02d}",
            "SUP-0001", "active" if i % 5 else "draft",
        ])
    col = {name: k for k, name in enumerate(ACME_HEADER)}
    # a repeated SKU: the same product sent twice with a different price
    duplicate = list(rows[8])
    duplicate[col["Price (GBP)"]] = "52.00"
    rows.insert(21, duplicate)
    flaws = [f"duplicated SKU {duplicate[0]!r} (rows 9 and 22, different prices)"]

    def plant(index: int, column: str, value: str, what: str) -> None:
        rows[index][col[column]] = value
        flaws.append(f"{what} (row {index + 1}, column {column!r}: {value!r})")

    for index in (6, 18, 32):
        plant(index, "Product Name", "", "missing required title")
    for index in (3, 14, 27):
        plant(index, "EAN", bad_check_digit(rows[index][col["EAN"]]), "GTIN with a wrong check digit")
    plant(10, "EAN", "5.06012E+12", "GTIN mangled into scientific notation by Excel")
    plant(1, "Weight", "620 g", "weight in grams")
    plant(5, "Weight", "0.85kg", "weight with a unit glued on")
    plant(6, "Weight", "3 lb", "weight in pounds")
    plant(19, "Weight", "1,45 kg", "weight with a decimal comma")
    plant(3, "Colour", "Brown", "enum value in title case")
    plant(4, "Colour", "Gray", "colour synonym (gray -> grey)")
    plant(9, "Colour", "wht", "colour abbreviation")
    plant(10, "Colour", "blk", "colour abbreviation")
    plant(14, "Colour", "GRY", "colour synonym (gry -> grey)")
    plant(16, "Colour", "Navy Blue", "colour synonym (navy blue -> navy)")
    plant(8, "Size", "Medium", "size synonym (medium -> M)")
    plant(16, "Size", "small", "size synonym (small -> S)")
    plant(0, "Description", "<p>Two-person <b>backpacking</b> tent.</p><ul><li>2.4 kg</li><li>3 season</li></ul>",
          "HTML in the description")
    plant(11, "Description", "<p>3-layer <strong>waterproof</strong> shell&nbsp;jacket.</p>", "HTML with an entity")
    plant(19, "Description", "Three-season synthetic bag.\nComfort rating -5C, limit -11C.",
          "description over two lines (quoted newline)")
    plant(1, "Price (GBP)", "£149.99", "price with a currency sign")
    plant(7, "Price (GBP)", "54,00", "price with a decimal comma")
    plant(13, "Price (GBP)", "1.299,00", "price in continental notation (1.299,00 = 1299.00)")
    plant(19, "Price (GBP)", "£1,129.00", "price with a thousands separator")
    plant(22, "Price (GBP)", "19.99 GBP", "price with a currency code")
    plant(5, "Launch Date", "01/06/2024", "date as dd/mm/yyyy")
    plant(12, "Launch Date", "5 Mar 2024", "date in words")
    plant(23, "Status", "Active", "status in title case")
    plant(24, "Status", "live", "status that is not an allowed value")
    plant(26, "Product Code", "acm10027", "SKU not matching the SKU pattern")
    assert len(rows) == 40
    return rows, flaws


def write_acme() -> list[str]:
    rows, flaws = acme_rows()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(ACME_HEADER)
    writer.writerows(rows)
    text = buffer.getvalue()
    (OUT / "acme" / "acme_products.csv").write_text(text, encoding="utf-8", newline="")
    return [_with_line(text, flaw) for flaw in flaws]


def _with_line(text: str, flaw: str) -> str:
    """Turn 'row N' (data row N) into the physical line the reader reports."""
    reader = csv.reader(io.StringIO(text, newline=""))
    starts, previous = [], 0
    for _ in reader:
        starts.append(previous + 1)
        previous = reader.line_num
    return re.sub(r"rows? (\d+)(?: and (\d+))?", lambda m: ("lines " if m.group(2) else "line ") + " and ".join(
        str(starts[int(g)]) for g in m.groups() if g), flaw)


# ---------------------------------------------------------------------------------------------
# acme_products_cp1252.csv: an older Acme export from Windows Excel: cp1252, semicolons

CP1252_HEADER = ["Product Code", "Product Name", "Description", "Brand", "EAN", "Price (£)", "Weight",
                 "Colour", "Size", "Category"]
CP1252_ROWS = [
    ("ACM-10101", "Après-ski Boot – Women’s", "Fleece-lined, size 38–41", "Acme Outdoor", "£89,00", "1,2 kg",
     "black", "", "footwear"),
    ("ACM-10102", "Café Enamel Mug", "Crème colour – 350 ml", "Acme Outdoor", "£9,50", "250 g", "white", "",
     "homeware"),
    ("ACM-10103", "Crème Hand Balm", "Shea butter – 75 ml", "Acme Outdoor", "£6,99", "0,1 kg", "white", "",
     "accessories"),
    ("ACM-10104", "Piñata Dry Bag", "Roll-top – 10 l", "Acme Outdoor", "£14,00", "0,12", "multi", "",
     "accessories"),
    ("ACM-10105", "Fjällräven-style Pack", "Canvas – 20 l", "Acme Outdoor", "£74,50", "900 g", "grey", "",
     "accessories"),
    ("ACM-10106", "Château Picnic Blanket", "Wool – 150×200 cm", "Acme Outdoor", "£39,00", "1,1 kg", "red", "",
     "homeware"),
    ("ACM-10107", "Naïve Print T-Shirt", "Organic cotton “Naïve” print", "Acme Outdoor", "£19,00", "0,18", "blue",
     "M", "apparel"),
    ("ACM-10108", "Résumé Notebook", "A5 – recycled paper", "Acme Outdoor", "£4,50", "0,2", "brown", "",
     "accessories"),
    ("ACM-10109", "Señor Sun Hat", "UPF 50 – packable", "Acme Outdoor", "£22,00", "0,1", "white", "L",
     "accessories"),
    ("ACM-10110", "Zürich Rain Jacket", "Seam-sealed – 2.5 layer", "Acme Outdoor", "£129,00", "480 g", "navy",
     "XL", "apparel"),
]


def write_acme_cp1252() -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=";", lineterminator="\r\n")
    writer.writerow(CP1252_HEADER)
    for i, (code, name, desc, brand, price, weight, colour, size, category) in enumerate(CP1252_ROWS):
        writer.writerow([code, name, desc, brand, gtin13(f"506012301{i:03d}"), price, weight, colour, size,
                         category])
    (OUT / "acme" / "acme_products_cp1252.csv").write_bytes(buffer.getvalue().encode("cp1252"))


# ---------------------------------------------------------------------------------------------
# globex_products.xlsx: title rows, a two-row header with a merged cell, a formula column, real
# dates, barcodes stored as numbers (one as scientific-notation text, one that lost its zero)

GLOBEX_HEADER = [
    "Item No.", "Description", "Details", "Brand", "Barcode", "Mfr Part No.", "Colour", "Size",
    "Unit Price £", "Price inc. VAT", "Net weight (g)", "Dimensions (cm)", None, "Category", "Picture",
    "Available from", "Status",
]
GLOBEX_SUBHEADER = {11: "Length", 12: "Width"}
# (title, colour, size, price, grams, length, width, category)
GLOBEX_PRODUCTS = [
    ("Classic Crew T-Shirt", "White", "S", 12.99, 160, 70, 50, "apparel"),
    ("Classic Crew T-Shirt", "White", "M", 12.99, 170, 72, 52, "apparel"),
    ("Classic Crew T-Shirt", "Black", "L", 12.99, 180, 74, 54, "apparel"),
    ("Oxford Shirt", "Blue", "M", 34.5, 240, 78, 56, "apparel"),
    ("Oxford Shirt", "Blue", "L", 34.5, 250, 80, 58, "apparel"),
    ("Chino Trousers", "Beige", "M", 42.0, 450, 104, 40, "apparel"),
    ("Denim Jacket", "Blue", "XL", 69.95, 820, 72, 60, "apparel"),
    ("Wool Scarf", "Grey", "", 24.0, 140, 180, 30, "accessories"),
    ("Leather Belt", "Brown", "M", 29.99, 210, 110, 4, "accessories"),
    ("Canvas Sneaker", "White", "", 54.0, 700, 30, 11, "footwear"),
    ("Canvas Sneaker", "Black", "", 54.0, 700, 30, 11, "footwear"),
    ("Hoodie", "Gray", "L", 39.99, 520, 72, 58, "apparel"),
    ("Hoodie", "Gray", "XXL", 39.99, 580, 78, 64, "apparel"),
    ("Rain Mac", "Navy", "M", 89.0, 690, 95, 60, "apparel"),
    ("Knit Jumper", "Red", "S", 47.5, 430, 66, 50, "apparel"),
    ("Knit Jumper", "Red", "M", 47.5, 450, 68, 52, "apparel"),
    ("Baseball Cap", "Black", "", 15.0, 90, 26, 19, "accessories"),
    ("Tote Bag", "Natural", "", 11.5, 200, 42, 38, "accessories"),
    ("Linen Shirt", "White", "L", 44.0, 230, 80, 58, "apparel"),
    ("Polo Shirt", "Green", "M", 27.0, 210, 72, 52, "apparel"),
    ("Puffer Vest", "Black", "M", 59.0, 380, 68, 54, "apparel"),
    ("Chelsea Boot", "Brown", "", 99.0, 1150, 31, 12, "footwear"),
    ("Swim Shorts", "Blue", "S", 22.0, 150, 45, 35, "apparel"),
    ("Rib Socks 5-pack", "Multi", "", 14.0, 250, 25, 12, "apparel"),
    ("Cardigan", "Grey", "XS", 49.0, 390, 62, 48, "apparel"),
    ("Trench Coat", "Beige", "L", 149.0, 1100, 105, 62, "apparel"),
    ("Slip-on Loafer", "Black", "", 79.0, 820, 30, 11, "footwear"),
    ("Silk Tie", "Navy", "", 35.0, 60, 148, 8, "accessories"),
    ("Gym Leggings", "Black", "M", 32.0, 240, 95, 28, "apparel"),
    ("Weekender Bag", "Brown", "", 119.0, 1400, 55, 30, "accessories"),
]
GLOBEX_FIRST_DATA_ROW = 6
GLOBEX_BLANK_AFTER = 20  # a blank row after the 20th product, as people leave in spreadsheets


def write_globex() -> list[str]:
    wb = openpyxl.Workbook()
    wb.properties.creator = "Globex Apparel"
    wb.properties.created = wb.properties.modified = dt.datetime(2025, 3, 3, 9, 0, 0)
    ws = wb.active
    ws.title = "Products"
    ws["A1"] = "Globex Apparel — Product feed March 2025"
    ws["A1"].font = Font(bold=True, size=14)
    ws.merge_cells(start_row=1, start_column=1, end_row=1, end_column=len(GLOBEX_HEADER))
    ws["A2"] = "Prices in GBP ex VAT unless stated. Questions: catalogue@globex.example.com"
    for c, name in enumerate(GLOBEX_HEADER, start=1):
        if name is not None:
            ws.cell(row=4, column=c, value=name).font = Font(bold=True)
    for c, name in GLOBEX_SUBHEADER.items():
        ws.cell(row=5, column=c + 1, value=name).font = Font(bold=True)
    ws.merge_cells(start_row=4, start_column=12, end_row=4, end_column=13)
    ws.cell(row=4, column=12).alignment = Alignment(horizontal="center")
    for c, name in enumerate(GLOBEX_HEADER, start=1):
        if name is not None and c not in (12, 13):
            ws.merge_cells(start_row=4, start_column=c, end_row=5, end_column=c)

    flaws: list[str] = []
    cached: dict[str, float] = {}
    row = GLOBEX_FIRST_DATA_ROW
    for i, (title, colour, size, price, grams, length, width, category) in enumerate(GLOBEX_PRODUCTS):
        if i == GLOBEX_BLANK_AFTER:
            flaws.append(f"blank row between products (row {row})")
            row += 1
        barcode: int | str = int(gtin13(f"400123{450 + i:06d}"))
        mpn: int | str = f"GX-{7300 + i}"
        details = f"{title} by Globex. Machine washable."
        launch: dt.date | str = dt.date(2025, 1 + i % 6, 1 + (i * 3) % 28)
        weight: int | str = grams
        status = "Active" if i % 4 else "Inactive"
        if i == 4:
            barcode = "4.00123E+12"
            flaws.append(f"barcode stored as scientific-notation text (row {row})")
        if i == 9:
            barcode = 36000291452  # UPC-A 036000291452 typed into a number cell
            flaws.append(f"UPC that lost its leading zero: 11 digits (row {row})")
        if i == 14:
            barcode = int(bad_check_digit(str(barcode)))
            flaws.append(f"barcode with a wrong check digit (row {row})")
        if i in (7, 23):
            title = None
            flaws.append(f"missing required title (row {row})")
        if i == 12:
            weight = "0.58 kg"
            flaws.append(f"weight as text with another unit (row {row})")
        if i == 17:
            mpn = 73017
            flaws.append(f"part number stored as a number (row {row})")
        if i == 26:
            launch = "TBC"
            flaws.append(f"date column holding text (row {row})")
        if i == 2:
            details = "<p>Heavyweight <b>organic</b> cotton.</p>"
            flaws.append(f"HTML in the details (row {row})")
        values = [f"GLX-{421 + i:05d}", title, details, "Globex", barcode, mpn, colour, size, price,
                  f"=I{row}*1.2", weight, length, width, category,
                  f"https://img.globex.example.com/p/{421 + i}.png", launch, status]
        for c, value in enumerate(values, start=1):
            cell = ws.cell(row=row, column=c, value=value)
            if isinstance(value, dt.date):
                cell.number_format = "dd/mm/yyyy"
            if c == 9:
                cell.number_format = "#,##0.00"
            if c == 5 and isinstance(value, int):
                cell.number_format = "0"
        cached[f"J{row}"] = price * 1.2
        row += 1
    flaws.append("barcodes stored as numbers (every numeric Barcode cell is flagged)")
    flaws.append("colours in title case and synonyms (Gray, Multi, Natural, Beige not in the enum)")
    flaws.append("status values Active/Inactive instead of active/draft/archived")

    notes = wb.create_sheet("Notes")
    notes["A1"] = "Notes for the Globex product feed"
    notes["A2"] = "Barcodes are EAN-13. Weights are net, in grams. Prices exclude VAT (20%)."
    notes["A3"] = "Items marked Inactive are discontinued; keep them for order history."

    buffer = io.BytesIO()
    wb.save(buffer)
    _write_with_cached_values(buffer.getvalue(), OUT / "globex" / "globex_products.xlsx", cached)
    return flaws


def _write_with_cached_values(xlsx: bytes, target: Path, cached: dict[str, float]) -> None:
    """openpyxl saves formulas without the value Excel caches next to them; put the values in, as
    Excel would, and give every zip entry a fixed time so the file is reproducible."""
    source = zipfile.ZipFile(io.BytesIO(xlsx))
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as out:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename == "xl/worksheets/sheet1.xml":
                text = data.decode("utf-8")

                def fill(m: re.Match) -> str:
                    return f"<c r=\"{m.group(1)}\"{m.group(2)}><f>{m.group(3)}</f><v>{cached[m.group(1)]!r}</v></c>"

                # openpyxl writes an empty value as <v/> (or <v></v> when it writes with lxml)
                empty = r'<c r="([A-Z]+\d+)"([^>]*)><f>([^<]*)</f>(?:<v\s*/>|<v>\s*</v>)</c>'
                text, count = re.subn(empty, fill, text)
                assert count == len(cached), (count, len(cached))
                data = text.encode("utf-8")
            if info.filename == "docProps/core.xml":  # openpyxl stamps the save time here
                data = re.sub(rb"(<dcterms:modified[^>]*>)[^<]*", rb"\g<1>2025-03-03T09:00:00Z", data)
            entry = zipfile.ZipInfo(info.filename, FIXED_ZIP_TIME)
            entry.compress_type = zipfile.ZIP_DEFLATED
            out.writestr(entry, data)


# ---------------------------------------------------------------------------------------------


def write_readme(acme_flaws: list[str], globex_flaws: list[str]) -> None:
    lines = [
        "# Demo supplier files",
        "",
        "Generated by `claro_dagster/demo/make_files.py`; edit that script, not these files.",
        "Line numbers are physical lines (CSV) and sheet rows (XLSX), as `read_supplier_file` reports them.",
        "",
        "| file | what it is |",
        "|---|---|",
        "| `acme_products.csv` | Acme Outdoor's export: UTF-8, comma separated, 40 rows (41 records over 42 lines) |",
        "| `acme_products_cp1252.csv` | an older Acme export: Windows-1252, `;` separated, CRLF, 10 rows, "
        "decimal commas |",
        "| `globex_products.xlsx` | Globex Apparel's workbook: sheet `Products` (title rows, two-row header "
        "with a merged `Dimensions (cm)` cell, formula column with cached values, real dates, 30 rows) "
        "and a `Notes` sheet |",
        "| `suppliers.csv` | 6 supplier rows (`supplier_id`, `name`, `contact_email`, `country`, "
        "`lead_time_days`); SUP-0006 is Acme again under another spelling, for Find Duplicates |",
        "",
        "## Flaws planted in `acme_products.csv`",
        "",
        *[f"- {flaw}" for flaw in acme_flaws],
        "",
        "## Flaws planted in `globex_products.xlsx` (sheet `Products`)",
        "",
        *[f"- {flaw}" for flaw in globex_flaws],
        "",
        "## `acme_products_cp1252.csv`",
        "",
        "- cp1252 bytes for é, £, – (en dash), ’ and “ ” : read as UTF-8 they would break",
        "- prices like `£89,00` and weights like `1,2 kg` (decimal commas, mixed units); colour `multi`",
        "",
    ]
    (OUT / "README.md").write_text("\n".join(lines), encoding="utf-8")


def write_globex_update() -> None:
    """A later price list from Globex: it contradicts prices already in the catalogue, so with the demo's
    `overwrite_confidence: 80` for Globex those changes wait in the review queue."""
    with open(OUT / "globex" / "globex_products_update.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["Item No.", "Description", "Unit Price £"])
        for i, (title, *_rest) in enumerate(GLOBEX_PRODUCTS[:3]):
            writer.writerow([f"GLX-{421 + i:05d}", title, f"{_rest[2] + 2:.2f}"])


def main() -> None:
    for folder in ("acme", "globex", "suppliers"):
        (OUT / folder).mkdir(parents=True, exist_ok=True)
    write_suppliers()
    acme_flaws = write_acme()
    write_acme_cp1252()
    write_globex_update()
    globex_flaws = [re.sub(r"\(row (\d+)\)", r"(sheet row \1)", f) for f in write_globex()]
    write_readme(acme_flaws, globex_flaws)
    for path in sorted(p for p in OUT.rglob("*") if p.is_file()):
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()

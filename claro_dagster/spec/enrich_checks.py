"""`claro check` problems of the attributes' `enrich:` blocks (Bulk Enrichment), each naming what is allowed."""

from __future__ import annotations

import re
import string

from .models import AttributeSpec, CatalogueSpec, EnrichMethodSpec, ProjectSpec

Loc = tuple[str | int, ...]
Problem = tuple[Loc, str]

#: The keys each method reads (besides `method` and `reliability`); any other key set on it is a mistake.
METHOD_KEYS: dict[str, set[str]] = {
    "rules": {"from_", "patterns"},
    "lookup": {"via", "field", "file", "key", "key_column", "prefix_lengths"},
    "similar": {"match_on", "min_similarity", "min_records"},
    "model": {"url_env", "api_key_env", "model", "prompt", "timeout_seconds", "max_attempts"},
}


def _yaml_name(key: str) -> str:
    return "from" if key == "from_" else key


def enrich_problems(spec: ProjectSpec, cat: CatalogueSpec, loc: Loc, name: str, attr: AttributeSpec) -> list[Problem]:
    """Problems of one attribute's `enrich:` block (loc: the block's key path)."""
    if attr.enrich is None:
        return []
    out: list[Problem] = []
    if not attr.enrich.methods:
        out.append((loc + ("methods",), "'enrich' needs at least one method (rules, lookup, similar or model) "
                    "under 'methods'"))
    if name == cat.key:
        out.append((loc, f"{name!r} is the catalogue key: a record's key is never enriched; remove 'enrich'"))
    if attr.type == "image":
        out.append((loc, "image attributes cannot be enriched (no method produces an image); remove 'enrich'"))
    for i, method in enumerate(attr.enrich.methods):
        out += _method_problems(spec, cat, loc + ("methods", i), name, attr, method)
    return out


def _method_problems(spec: ProjectSpec, cat: CatalogueSpec, loc: Loc, name: str, attr: AttributeSpec,
                     m: EnrichMethodSpec) -> list[Problem]:
    out: list[Problem] = []
    for key in sorted(m.model_fields_set - METHOD_KEYS[m.method] - {"method", "reliability"}):
        owner = next((k for k, keys in METHOD_KEYS.items() if key in keys), "another")
        allowed = ", ".join(sorted(_yaml_name(k) for k in METHOD_KEYS[m.method]))
        out.append((loc + (_yaml_name(key),), f"{_yaml_name(key)!r} is a key of {owner} methods, not of "
                    f"{m.method}; keys of {m.method}: {allowed}"))

    def attribute(path: Loc, value: str, of: CatalogueSpec = cat, what: str = "an attribute of this catalogue"):
        if value not in of.attributes:
            out.append((path, f"{value!r} is not {what}; attributes are: {', '.join(of.attributes)}"))
            return False
        return True

    if m.method == "rules":
        if not m.from_:
            out.append((loc, "a rules method needs 'from': the attributes whose text it reads, e.g. [title, "
                        "description]"))
        for j, source in enumerate(m.from_):
            if attribute(loc + ("from", j), source) and source == name:
                out.append((loc + ("from", j), f"a rule cannot read {name!r} to fill {name!r}"))
        for j, pattern in enumerate(m.patterns):
            try:
                re.compile(pattern)
            except re.error as exc:
                out.append((loc + ("patterns", j), f"{pattern!r} is not a valid regular expression: {exc}"))
        if not m.patterns and not (attr.type == "enum" or (attr.type == "number" and attr.unit)):
            out.append((loc, f"{name!r} is a {attr.type} attribute"
                        + (" without a unit" if attr.type == "number" else "")
                        + ": give 'patterns' (regular expressions whose group 'value' is the value); without "
                          "them rules read enum values and numbers with units only"))
    elif m.method == "lookup":
        if (m.via is None) == (m.file is None):
            out.append((loc, "a lookup method needs exactly one of 'via' (a reference attribute: read another "
                        "catalogue) or 'file' (a CSV reference file)"))
        if not m.field:
            out.append((loc, "a lookup method needs 'field': the attribute of the referenced catalogue, or the "
                        "column of the reference file, that holds the value"))
        if m.via is not None and attribute(loc + ("via",), m.via):
            ref = cat.attributes[m.via]
            if ref.type != "reference" or not ref.target or ref.target not in spec.catalogues:
                out.append((loc + ("via",), f"{m.via!r} is a {ref.type} attribute; 'via' names a reference "
                            "attribute (type: reference, with a target catalogue)"))
            elif m.field:
                attribute(loc + ("field",), m.field, spec.catalogues[ref.target],
                          f"an attribute of catalogue {ref.target!r}")
        if m.file is not None:
            if not m.key:
                out.append((loc, "a lookup from a file needs 'key': the attribute of this catalogue looked up in "
                            "the file (in its column 'key_column', default the same name)"))
            else:
                attribute(loc + ("key",), m.key)
            # The file itself is read when enrichment runs (a spec is often checked away from its data files):
            # missing then, the lookup is skipped with a note saying where it was looked for.
            if not m.file.lower().endswith(".csv"):
                out.append((loc + ("file",), f"{m.file!r}: reference files are CSV (a header row, then one row "
                            "per key)"))
        if any(n <= 0 for n in m.prefix_lengths):
            out.append((loc + ("prefix_lengths",), "prefix lengths are positive numbers of characters, e.g. [9, 7]"))
    elif m.method == "similar":
        for j, a in enumerate(m.match_on):
            if attribute(loc + ("match_on", j), a) and a == name:
                out.append((loc + ("match_on", j), f"records cannot be matched on {name!r} to fill {name!r}"))
        if not m.match_on:
            out.append((loc + ("match_on",), "'match_on' needs at least one attribute, e.g. [title, brand]"))
    else:
        if not m.url_env:
            out.append((loc, "a model method needs 'url_env': the environment variable holding the base URL of an "
                        "OpenAI-compatible API (e.g. https://api.openai.com/v1)"))
        if not m.model:
            out.append((loc, "a model method needs 'model': the model name the endpoint serves, e.g. gpt-4o-mini"))
        if m.prompt is not None:
            try:
                names = [f for _, f, _, _ in string.Formatter().parse(m.prompt) if f]
            except ValueError as exc:
                out.append((loc + ("prompt",), f"the prompt template does not parse ({exc}); placeholders are "
                            "{attribute}, literal braces are written {{ and }}"))
                names = []
            for placeholder in names:
                if placeholder not in cat.attributes:
                    out.append((loc + ("prompt",), f"placeholder {{{placeholder}}} is not an attribute of this "
                                f"catalogue; attributes are: {', '.join(cat.attributes)}"))
        if attr.type not in ("text", "enum", "number", "reference"):
            out.append((loc, f"a model cannot fill {attr.type} attributes; it fills text, enum, number and "
                        "reference attributes"))
    return out


def pipeline_enrich_problems(spec: ProjectSpec) -> list[Problem]:
    """`batch_enrichment: true` needs a catalogue with attributes to enrich, and batches to enrich."""
    out: list[Problem] = []
    for name, pipe in spec.pipelines.items():
        if not pipe.batch_enrichment or pipe.catalogue not in spec.catalogues:
            continue
        cat = spec.catalogues[pipe.catalogue]
        if not any(a.enrich is not None and a.enrich.methods for a in cat.attributes.values()):
            out.append((("pipelines", name, "batch_enrichment"), f"no attribute of catalogue {pipe.catalogue!r} has "
                        "'enrich' methods: add them (attributes.<name>.enrich.methods) or remove batch_enrichment"))
        if pipe.after is not None:
            out.append((("pipelines", name, "batch_enrichment"), "a pipeline started by 'after' has no batches: "
                        "list 'enrich' under its 'operations' instead"))
    return out

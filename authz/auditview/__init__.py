"""``tollgate audit ui``: a read-only web view of the audit trail for auditors.

    app.py         the Starlette application: pages, export, proofs, who is looking
    integrity.py   verifies the log in a separate process, again and again; every page shows the verdict
    charts.py      the overview's charts, rendered to SVG on the server (pygal; no scripts on the page)
    templates/     Jinja2 pages; static/ their stylesheet

It reads the log and its index (:mod:`authz.audit.index`) and never writes to the log. It is meant
to sit behind Envoy and Tollgate, which decide who may look and record every view (docs/audit.md).
"""

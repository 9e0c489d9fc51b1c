"""The browser demo: `python -m efficientsam_jax.demo --checkpoint=PATH [--port=N]`.

Modules: session.py (what the page asks of a model: embed, segment, everything, mask PNG, COCO
JSON), server.py (those behind a standard-library HTTP server), page.py (the page).
"""

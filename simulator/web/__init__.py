"""The simulator as a workbench: a local web page to tap cards and watch the terminal live.

``unionterm-sim ui`` runs :mod:`simulator.web.server`; the page itself is in
``static/`` (plain HTML, CSS and JavaScript, no build step).
"""

"""Local web apps: the rating workbench (``convfocus rate``) and the slide viewer
(``convfocus view``). Standard library HTTP server; the core never imports this package."""

"""An app module that raises on import: its workers crash-loop."""

raise RuntimeError("sup_broken fails to import on purpose")

"""An app module that raises on import (for crash-loop and bad-input tests)."""

raise RuntimeError("this app is broken on purpose")

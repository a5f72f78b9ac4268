"""One router per area: search (and explain), photos, meta."""

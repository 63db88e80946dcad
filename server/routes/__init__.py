"""The API's routers: search, documents, and operations (health, stats, snapshot, page)."""

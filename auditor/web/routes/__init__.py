"""The review app's routers, one per resource."""

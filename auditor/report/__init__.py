"""Self-contained HTML reports (images and plots embedded) for a person to read."""

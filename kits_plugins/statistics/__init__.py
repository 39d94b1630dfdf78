"""Per-kidney and per-lesion measurements of KiTS label maps (kits statistics, kits predict --statistics)."""

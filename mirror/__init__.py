"""bucket-mirror: mirror whole storage buckets onto local disks."""

__version__ = "0.1.0"

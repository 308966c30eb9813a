"""Metrics, tracing, metering and showback, SLOs and the dashboard's recent series: everything that
reads the one UsageRecord per finished request. Imports only inferline.types, inferline.config and
inferline.errors, never the rooms that use it."""
